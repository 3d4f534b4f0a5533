"""Progress of long steps, on stderr: a tqdm bar on a terminal, a few plain lines when piped.

``progress(total, desc, enabled=None)`` → a counter with ``update(n=1)`` and ``close()`` (also a context
manager). ``enabled``: None = a bar on a terminal, plain lines otherwise (logs, CI, ``2> file``);
True = the same; False = silent. Plain lines are ``desc: 50 % (157/314), 3.1 s`` at each quarter, so a
piped run of minutes still says it is alive without flooding a log. ``steps(iterable, total, desc)``
wraps an iterable. Standard library only (tqdm is used when installed): the runtime may import it.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
QUARTERS = (25, 50, 75, 100)


class _Counter:
    """update(n) / close() / context manager: the interface tqdm has too."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lines(_Counter):
    """Plain progress lines at 25 / 50 / 75 / 100 %."""

    def __init__(self, total: int, desc: str, stream):
        self.total, self.desc, self.stream = max(0, int(total)), desc, stream
        self.done, self.start, self.said = 0, time.perf_counter(), 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.total:
            return
        percent = min(100, 100 * self.done // self.total)
        reached = [q for q in QUARTERS if q <= percent and q > self.said]
        if reached:
            self.said = reached[-1]
            print(f"{self.desc}: {percent} % ({min(self.done, self.total)}/{self.total}), "
                  f"{time.perf_counter() - self.start:.1f} s", file=self.stream, flush=True)


def progress(total: int, desc: str, enabled: bool | None = None, stream=None):
    """A counter (``update``, ``close``, context manager): tqdm on a terminal, else ``_Lines`` / silent."""
    stream = stream if stream is not None else sys.stderr
    if enabled is False:
        return _Counter()
    if getattr(stream, "isatty", lambda: False)():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc, file=stream, leave=False)
    return _Lines(total, desc, stream)


def steps(items: Iterable[T], total: int, desc: str, enabled: bool | None = None, stream=None) -> Iterator[T]:
    """Yield ``items``, counting each one."""
    with progress(total, desc, enabled, stream) as bar:
        for item in items:
            yield item
            bar.update(1)
