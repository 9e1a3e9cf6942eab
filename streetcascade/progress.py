"""Progress for long offline work (compile, calibration, the sensitivity pass, fit-head, eval,
tune): step lines, and bars from `rich.progress` when stderr is a terminal.

Off a terminal (CI logs, pipes) there are no bars, only the step lines and a line when a
tracked loop finishes; with `enabled=False` only log records at INFO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("streetcascade")
T = TypeVar("T")


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    @property
    def interactive(self) -> bool:
        return self._console is not None and self._console.is_terminal

    def step(self, message: str) -> None:
        log.info(message)
        if self._console is not None:
            self._console.print(f"[bold cyan]>[/] {message}", highlight=False)

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Yield `items`, showing a bar (`total` if the iterable has no len) and a closing line."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        count = 0
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
            with RichProgress(*columns, console=self._console, transient=True) as bar:
                task = bar.add_task(description, total=total)
                for item in items:
                    yield item
                    count += 1
                    bar.advance(task)
        else:
            for item in items:
                yield item
                count += 1
        self.step(f"{description}: {count} done in {time.perf_counter() - t0:.1f} s")


QUIET = Progress(enabled=False)
