"""What the CLI shows besides the product: notes and timings on stderr, progress bars, and stdout writes
that survive a closed pipe."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .app import state

if TYPE_CHECKING:
    from ..completion.prompt import Truncation


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def note(message: str, verbose: bool) -> None:
    """Progress and timings: stderr, and only to a terminal unless --verbose."""
    if verbose or sys.stderr.isatty():
        print(f"sc2: {message}", file=sys.stderr, flush=True)


def truncation_note(truncated: Truncation) -> str:
    parts = [f"{n} {part}" for part, n in vars(truncated).items() if n]
    return f"; trimmed to fit the budget, dropping tokens: {', '.join(parts)}" if parts else ""


def quiet_hub_logs() -> None:
    """huggingface_hub logs retries and hints as warnings that would tear through the progress bar; the bar and
    our one-line errors say what matters. HF_HUB_VERBOSITY, if set, still wins; --debug keeps everything."""
    if state["debug"] or os.environ.get("HF_HUB_VERBOSITY"):
        return
    os.environ["HF_HUB_VERBOSITY"] = "error"  # read when huggingface_hub is imported
    if "huggingface_hub.utils.logging" in sys.modules:  # already imported: set its logger directly
        import logging

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


class ProgressBar:
    """A progress bar on stderr for downloads and loading (size, speed, time left). `with ProgressBar(label) as
    progress` gives the `progress(done, total)` callback that the hub and the weight loader take, or None when
    stderr is not a terminal, so logs and pipes stay clean. The bar appears once there are bytes to move."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar = None
        self.task = None

    def __enter__(self):
        quiet_hub_logs()
        return self.update if sys.stderr.isatty() else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self._start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def _start(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        bar = Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True))
        bar.start()
        return bar

    def notice(self, message: str) -> None:
        """One line from the hub while it works (a file fetched again, a wait for another download): above the
        bar when there is one, else on stderr."""
        if self.bar is not None:
            self.bar.console.print(f"sc2: {message}", markup=False, highlight=False, soft_wrap=True)
        else:
            print(f"sc2: {message}", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
