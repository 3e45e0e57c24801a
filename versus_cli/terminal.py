"""The CLI's terminal output, drawn by rich: consoles, evidence-mark words, and progress that is a live bar with an
ETA on a terminal and plain, thinned lines (no carriage returns, no escape codes) in a log or a pipe.

rich decides what a stream is (``Console.is_terminal``); nothing here writes ``\\r`` itself.
"""

from __future__ import annotations

from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn
from versus.gateway.v1 import gateway_pb2

UNMARKED = "not assessed"
_MARK_PREFIX = "EVIDENCE_MARK_"


def console(file: IO[str] | None = None, *, stderr: bool = False, width: int | None = None) -> Console:
    """A Console on ``file`` (stdout, or stderr with ``stderr=True``: progress goes there, so that stdout stays the
    command's result). Markup and highlighting are off: model ids,
    claims and intervals such as ``[950, 1081]`` are data, printed as they are."""
    return Console(file=file, stderr=stderr, width=width, markup=False, highlight=False, emoji=False)


def mark_words(mark: int) -> str:
    """An evidence mark as words, from its name in the contract (EVIDENCE_MARK_VERIFIED_LIVE → "verified live")."""
    if mark == gateway_pb2.EVIDENCE_MARK_UNSPECIFIED or mark not in gateway_pb2.EvidenceMark.values():
        return UNMARKED  # not judged, or a mark a newer gateway added
    return gateway_pb2.EvidenceMark.Name(mark).removeprefix(_MARK_PREFIX).replace("_", " ").lower()


class StreamProgress:
    """Progress of one long call. On a terminal: description, bar, percentage and time remaining, redrawn in place.
    Elsewhere: one line ``[ 42%] text`` when ``key`` changes or another tenth of the work is done. ``out=None``:
    nothing is shown (``--quiet``)."""

    def __init__(self, out: Console | None) -> None:
        self.out = out
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last: tuple[object, int] | None = None

    def __enter__(self) -> StreamProgress:
        if self.out is not None and self.out.is_terminal:
            self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                                 TimeRemainingColumn(), console=self.out, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=1.0)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)

    def update(self, fraction: float, text: str, key: object = None) -> None:
        """Show ``fraction`` (0..1) done, described by ``text``; ``key`` names the phase (a new one is always shown)."""
        fraction = max(0.0, min(1.0, fraction))
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=fraction, description=text)
            return
        mark = (key, int(fraction * 10))
        if self.out is not None and mark != self._last:
            self._last = mark
            self.out.print(f"[{fraction:4.0%}] {text}", soft_wrap=True)

    def note(self, text: str) -> None:
        """A message that is not progress (e.g. the place in a queue)."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=text)
        elif self.out is not None:
            self.out.print(text, soft_wrap=True)


class GenerationProgress(StreamProgress):
    """Progress of one Generate stream: call the instance with each event."""

    def __call__(self, event: Any) -> None:
        kind = event.WhichOneof("event")
        if kind == "queued":
            self.note(f"queued, {event.queued.position} ahead")
        elif kind == "progress":
            p = event.progress
            self.update(p.step / max(1, p.total_steps), f"step {p.step}/{p.total_steps}, {p.elapsed_ms / 1000:.1f} s",
                        key="denoising")
