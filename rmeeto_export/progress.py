"""Progress within a long stage: a bar redrawn in place on a terminal, a few plain lines anywhere else.

Logs and CI get one line per quarter of the work (and the last step), so a log shows that a
stage moves and how fast without a line per item; a terminal gets a bar on one line that is
finished with the elapsed time.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")
BAR_WIDTH = 24
PLAIN_STEPS = 4  # plain lines per run of work: at 25%, 50%, 75% and 100%
INDENT = "      "  # under a stage's "[i/n] title ..." line, as the stage's other lines


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _bar(done: int, total: int) -> str:
    filled = BAR_WIDTH * done // total
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def progress(items: Iterable[T], label: str, total: Optional[int] = None, log: Callable[[str], None] = print,
             stream: Optional[TextIO] = None) -> Iterator[T]:
    """Yields `items`, reporting `label done/total` as they are consumed.

    total: defaults to len(items). log: where the plain lines go (the stage's log); stream: the
    terminal the bar is drawn on (default stdout); the bar is drawn only when it is a terminal.
    """
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = len(items) if total is None else total  # type: ignore[arg-type]
    stream = sys.stdout if stream is None else stream
    on_terminal = _is_terminal(stream)
    started, reported = time.perf_counter(), 0
    for done, item in enumerate(items, 1):
        yield item
        elapsed = time.perf_counter() - started
        if on_terminal:
            end = "\n" if done == total else ""
            stream.write(f"\r{INDENT}{label} {_bar(done, total)} {done}/{total} {elapsed:.1f} s{end}")
            stream.flush()
        elif total and (done * PLAIN_STEPS // total > reported or done == total):
            reported = done * PLAIN_STEPS // total
            log(f"{INDENT}{label}: {done}/{total} ({100 * done // total}%) after {elapsed:.1f} s")
