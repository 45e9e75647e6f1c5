"""``ipsbench-serve --frontends N``: the parent process that starts, watches and stops the engine and front ends.

The supervisor holds the gRPC port (a socket bound with SO_REUSEPORT and never listening, so the front ends, which
bind it the same way, can come and go without another program taking it), starts one engine process and N front-end
processes (``spawn``: no state shared by accident), prints the lines scripts parse — ``gRPC listening`` once every
front end has bound the port, the engine's ``metrics`` line, ``ready`` once the engine says every part is — and
restarts a front end or the engine that dies, unless it died while starting (a configuration problem: the server
exits with its code). SIGTERM or SIGINT (once) drains: the engine refuses new work and finishes what is in flight,
then the front ends stop; a second signal ends everything at once. The exit code is the engine's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ipsbench.server.app import url_host
from ipsbench.server.frontends.frontend import ring_layout
from ipsbench.server.frontends.ring import shared_memory_free
from ipsbench.server.logformat import configure_logging
from ipsbench.server.settings import Settings
from ipsbench.server.signals import capture_signals

log = logging.getLogger(__name__)

POLL_S = 0.1
STOP_FRONTENDS_S = 10.0
"""After the engine has stopped, how long the front ends get to finish writing responses before they are killed."""
_PR_SET_PDEATHSIG = 1


@dataclass(eq=False)
class _Child:
    role: str
    """``engine`` or ``frontend N``."""
    index: int
    process: multiprocessing.process.BaseProcess
    events: multiprocessing.connection.Connection
    started: bool = False
    """It got through start-up once (bound its port / loaded its models): a later death is a crash to restart."""
    restarts: int = 0


@dataclass
class _Lines:
    """The start-up lines, printed in the order scripts expect whatever order the children send them in."""

    bound: set[int] = field(default_factory=set)
    listening: bool = False
    ready_waiting: bool = False
    ready_printed: bool = False


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.folder = Path(tempfile.mkdtemp(prefix="ipsbench-serve-"))
        self.socket_path = self.folder / "engine.sock"
        self.engine: _Child | None = None
        self.frontends: list[_Child] = []
        self.lines = _Lines()
        self.port: int | None = None
        self._placeholder: socket.socket | None = None
        self._signals = 0
        self._engine_stopping = False
        """The engine has taken a SIGTERM (it said so)."""

    # -- entry point ---------------------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            with capture_signals(self._on_signal):
                if not self._prepare():
                    return 1
                self._start_all()
                return self._watch()
        finally:
            self._kill_all()
            if self._placeholder is not None:
                self._placeholder.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s received: shutting down gracefully (send it again to force)", name)
        else:
            log.warning("%s again: exiting now without waiting for in-flight requests", name)

    # -- start-up ------------------------------------------------------------------------------------------------

    def _prepare(self) -> bool:
        settings = self.settings
        try:
            self._placeholder, self.port = _hold_port(settings.host, settings.grpc_port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", settings.host, settings.grpc_port, exc)
            return False
        changes: dict = {"grpc_port": self.port}
        if settings.allow_metrics and settings.metrics_port == 0:
            changes["metrics_port"] = _free_port(settings.host)  # one port for every engine life
        slots, slot_bytes = ring_layout(settings)
        ring_bytes = settings.frontends * slots * slot_bytes
        free = shared_memory_free()
        if ring_bytes > free // 2:
            mb = max(4, free // 2 // settings.frontends // (1024 * 1024))
            log.warning("shared memory has %d MiB free: %d MiB per front end instead of %d (--frontend-ring-mb)",
                        free // (1024 * 1024), mb, settings.frontend_ring_mb)
            changes["frontend_ring_mb"] = mb
        self.settings = dataclasses.replace(settings, **changes)
        log.info("%d front-end processes on port %d, one engine process", settings.frontends, self.port)
        return True

    def _start_all(self) -> None:
        self.engine = self._spawn("engine", 0)
        self.frontends = [self._spawn(f"front end {i}", i) for i in range(self.settings.frontends)]

    def _spawn(self, role: str, index: int, restarts: int = 0) -> _Child:
        receive, send = self.context.Pipe(duplex=False)
        if role == "engine":
            target, args = _engine_main, (self.settings, self.socket_path, send)
        else:
            target, args = _frontend_main, (self.settings, index, self.socket_path, send)
        process = self.context.Process(target=target, args=args, name=f"ipsbench-serve {role}", daemon=False)
        process.start()
        send.close()
        log.info("%s started (pid %d)", role, process.pid)
        return _Child(role, index, process, receive, restarts=restarts)

    # -- watching ------------------------------------------------------------------------------------------------

    def _children(self) -> list[_Child]:
        return [c for c in (self.engine, *self.frontends) if c is not None]

    def _watch(self) -> int:
        while True:
            if self._signals:
                return self._stop()
            children = self._children()
            waitables = [c.events for c in children] + [c.process.sentinel for c in children]
            ready = multiprocessing.connection.wait(waitables, timeout=POLL_S)
            for child in children:
                if child.events in ready:
                    self._drain_events(child)
            for child in children:
                if child.process.sentinel in ready or not child.process.is_alive():
                    self._drain_events(child)
                    code = self._on_exit(child)
                    if code is not None:
                        return code

    def _drain_events(self, child: _Child) -> None:
        try:
            while child.events.poll():
                self._on_event(child, child.events.recv())
        except (EOFError, OSError):
            pass

    def _on_event(self, child: _Child, event: tuple) -> None:
        kind = event[0]
        if kind == "bound":
            child.started = True
            self.lines.bound.add(child.index)
            if not self.lines.listening and len(self.lines.bound) == self.settings.frontends:
                self.lines.listening = True
                _print(f"ipsbench-serve: gRPC listening on {url_host(self.settings.host)}:{self.port}")
                if self.lines.ready_waiting:
                    self._print_ready()
        elif kind == "failed":
            log.error("%s: %s", child.role, event[1])
        elif kind == "announce":
            line = event[1]
            if line == "ipsbench-serve: stopping":
                self._engine_stopping = True
            elif line == "ipsbench-serve: ready":
                child.started = True
                if self.lines.listening:
                    self._print_ready()
                else:
                    self.lines.ready_waiting = True
            elif line.startswith("ipsbench-serve: metrics") and child.restarts:
                pass  # printed once, by the first engine (the port stays the same)
            else:
                _print(line)

    def _print_ready(self) -> None:
        if not self.lines.ready_printed:
            self.lines.ready_printed = True
            _print("ipsbench-serve: ready")

    def _on_exit(self, child: _Child) -> int | None:
        """Restart a crashed child; the exit code to end with when the server cannot go on."""
        child.process.join()
        code = child.process.exitcode
        if not child.started:
            log.error("%s exited with code %s during start-up: stopping", child.role, code)
            self._signals = max(self._signals, 1)
            return self._stop(code if code else 1)
        log.error("%s (pid %d) stopped unexpectedly (exit code %s): restarting it", child.role, child.process.pid,
                  code)
        replacement = self._spawn(child.role, child.index, child.restarts + 1)
        replacement.started = child.role != "engine"  # a front end rebinding is no new start-up
        if child.role == "engine":
            self.engine = replacement
            self._engine_stopping = False
        else:
            self.frontends[child.index] = replacement
        return None

    # -- stopping ------------------------------------------------------------------------------------------------

    def _stop(self, code: int | None = None) -> int:
        """Drain: the engine first (it refuses new work and finishes in-flight requests), then the front ends."""
        engine = self.engine
        forced = False
        if engine is not None and engine.process.is_alive():
            os.kill(engine.process.pid, signal.SIGTERM)
            while engine.process.is_alive():
                # A second signal: the engine's own second SIGTERM forces it (once it has taken the first).
                if self._signals > 1 and not forced and self._engine_stopping:
                    forced = True
                    os.kill(engine.process.pid, signal.SIGTERM)
                engine.process.join(POLL_S)
                self._drain_events(engine)
        engine_code = engine.process.exitcode if engine is not None else None
        for frontend in self.frontends:
            if frontend.process.is_alive():
                os.kill(frontend.process.pid, signal.SIGKILL if forced else signal.SIGTERM)
        deadline = time.monotonic() + STOP_FRONTENDS_S
        for frontend in self.frontends:
            frontend.process.join(max(0.0, deadline - time.monotonic()))
        if code is not None:
            return code
        if engine_code is None:
            return 1
        return engine_code if engine_code >= 0 else 128 - engine_code

    def _kill_all(self) -> None:
        for child in self._children():
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)


def _print(line: str) -> None:
    print(line, flush=True)


def _hold_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound to ``host:port`` with SO_REUSEPORT and never listening: the port stays ours."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    holder = socket.socket(family, kind, proto)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
    except OSError:
        holder.close()
        raise
    return holder, holder.getsockname()[1]


def _free_port(host: str) -> int:
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.bind(address)
        return probe.getsockname()[1]


# -- the children's entry points (run in fresh interpreters) -----------------------------------------------------


def _child_setup(settings: Settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the supervisor's to act on
    try:  # end with the supervisor, even if it is killed
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    configure_logging(settings.log_verbose, settings.log_format)


def _engine_main(settings: Settings, socket_path: Path, events) -> None:
    _child_setup(settings)
    from ipsbench.server.frontends.engine import EngineApp

    socket_path.unlink(missing_ok=True)  # a crashed engine's
    app = EngineApp(settings, socket_path, announce=lambda line: events.send(("announce", line)))
    code = app.run()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if app.forced_exit:
        os._exit(code)
    sys.exit(code)


def _frontend_main(settings: Settings, index: int, socket_path: Path, events) -> None:
    import asyncio

    from ipsbench.server.allocator import map_large_blocks
    from ipsbench.server.frontends.frontend import serve_frontend

    _child_setup(settings)
    map_large_blocks()
    sys.exit(asyncio.run(serve_frontend(settings, index, socket_path, events.send)))
