"""A one-line progress bar on stderr, drawn only when stderr is a terminal.

The CLI's long work (``geobus send`` uploading, ``--wait`` following a job,
``geobus convert``) reports through it. Nothing is written when stderr is a
pipe or a file, so scripts and ``--json`` output never see a bar; redraws
are throttled so that a fast loop does not spend its time on the terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
MIN_REDRAW_S = 0.1


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable: the loop returns at GB


class Progress:
    """A bar for ``total`` units (bytes when ``in_bytes``, else plain numbers such as %)."""

    def __init__(
        self,
        label: str,
        total: float,
        *,
        in_bytes: bool = False,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 1)
        self.in_bytes = in_bytes
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.note = ""
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._done = 0.0
        self._visible = False
        self._drawn: tuple[float, str] | None = None

    def line(self, done: float) -> str:
        """The text of the bar at ``done`` (without the leading carriage return)."""
        share = min(max(done / self.total, 0.0), 1.0)
        bar = "#" * int(share * WIDTH)
        text = f"{self.label} [{bar:<{WIDTH}}] {share:6.1%}"
        if self.in_bytes:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            text += f"  {_size(done)}/{_size(self.total)}  {_size(done / elapsed)}/s"
        if self.note:
            text += f"  {self.note}"
        return text

    def show(self, done: float, note: str = "", *, force: bool = False) -> None:
        """Redraw at ``done`` (at most every 0.1 s unless ``force``)."""
        self._done = done
        self.note = note or self.note
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < MIN_REDRAW_S and done < self.total:
            return
        self._drawn_at = now
        self._drawn = (done, self.note)
        # Pad so that a shorter line wipes out the end of the previous one.
        self.stream.write(f"\r{self.line(done):<79}")
        self.stream.flush()
        self._visible = True

    def close(self) -> None:
        """Draw the last state and end the line."""
        if self.enabled and self._visible:
            if self._drawn != (self._done, self.note):
                self.show(self._done, force=True)
            self.stream.write("\n")
            self.stream.flush()
            self._visible = False
