"""Scenarios: the steps each ``ipsbench-load`` command runs, and the table of commands (``catalog``)."""
