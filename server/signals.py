"""SIGINT and SIGTERM, captured for as long as a server or a load run lasts and given back afterwards.

:func:`capture_signals` (the shape of uvicorn's ``Server.capture_signals``) routes the signals to a handler while
its block runs and restores whatever handlers were installed before when it ends, so a program that runs a server
or a load run in-process keeps its own Ctrl-C. How a signal reaches the handler depends on the loop the program
runs: :func:`asyncio_delivery` for the server's event loop; the load generator passes gevent's (its
:func:`ipsbench.loadgen.environment.gevent_delivery`). Unlike uvicorn's, a captured signal is not re-raised on
exit: the server and the load runs end with exit codes of their own (0 after a graceful stop, 130 or 143).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int], None]
Delivery = Callable[[int, Handler], Callable[[], None]]
"""``deliver(signum, handler)`` makes ``handler(signum)`` run when the signal arrives; returns how to undo it."""


def plain_delivery(signum: int, handler: Handler) -> Callable[[], None]:
    """The handler runs as a plain Python signal handler, in the main thread."""
    signal.signal(signum, lambda received, _frame: handler(received))
    return lambda: None


def asyncio_delivery(loop: asyncio.AbstractEventLoop) -> Delivery:
    """The handler runs as a callback of ``loop`` (the server's event loop)."""

    def deliver(signum: int, handler: Handler) -> Callable[[], None]:
        loop.add_signal_handler(signum, handler, signum)
        return lambda: loop.remove_signal_handler(signum)

    return deliver


@contextmanager
def capture_signals(
    handler: Handler, deliver: Delivery = plain_delivery, signals: Sequence[int] = HANDLED_SIGNALS
) -> Iterator[None]:
    """Route ``signals`` to ``handler`` while the block runs; the previous handlers are back when it ends."""
    previous = {signum: signal.getsignal(signum) for signum in signals}
    undo = []
    try:
        for signum in signals:
            undo.append(deliver(signum, handler))
        yield
    finally:
        for remove in reversed(undo):
            remove()
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before if handler_before is not None else signal.SIG_DFL)
