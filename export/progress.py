"""Progress of long export steps (export, engine build, calibration, verification) as plain lines on stderr.

A line when a step starts and one with its duration when it ends, so a user watching a multi-minute TensorRT build
or a preset of nine models sees where the time goes without any terminal library.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


class Progress:
    def __init__(self, stream=None, prefix: str = "ipsbench-export") -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._prefix = prefix
        self._started = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def note(self, message: str) -> None:
        print(f"{self._prefix} [{self.elapsed_s:6.1f}s] {message}", file=self._stream, flush=True)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        """``message ...`` now, ``message: done in N s`` (or ``failed``) when the block ends."""
        self.note(f"{message} ...")
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.note(f"{message}: failed after {time.perf_counter() - started:.1f}s")
            raise
        self.note(f"{message}: done in {time.perf_counter() - started:.1f}s")
