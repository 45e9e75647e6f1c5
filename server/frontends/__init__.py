"""Many front-end processes, one engine process (``ipsbench-serve --frontends N``): the supervisor, the processes and
the shared-memory link between them."""
