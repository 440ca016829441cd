"""Progress people can read anywhere: a rich bar on a terminal; in a log (output to a file or a pipe: nohup, CI,
a cluster job) a plain line on stderr every ASD_PROGRESS_EVERY seconds (default 30) with the count, the rate,
the ETA and the loss, so a long run never looks dead. Nothing at all with --quiet.

The ETA comes from an exponential moving average of the time per item that skips the first item after a start
or resume: that one pays for warm-up (lazy imports, caches, allocator growth) and made early ETAs wildly long.
"""

from __future__ import annotations

import math
import os
import sys
import time

EVERY_ENV = "ASD_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0


def interactive() -> bool:
    """True when both stdout and stderr are terminals (a person watching), False in logs and pipes."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def plain_every_s() -> float:
    """Seconds between plain progress lines (ASD_PROGRESS_EVERY; a bad value falls back to the default)."""
    try:
        value = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_EVERY_S


def format_duration(seconds: float | None) -> str:
    """12 → "12s", 338 → "5m38s", 3725 → "1h02m"; None or not finite → "?"."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class RateEstimator:
    """Items per second as an exponential moving average of the seconds per item, the first item skipped."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.seconds_per_item: float | None = None
        self._last: tuple[float, float] | None = None  # (completed, time) of the previous update
        self._skipped_first = False

    def update(self, completed: float, now: float) -> None:
        if self._last is None:
            self._last = (completed, now)
            return
        done, dt = completed - self._last[0], now - self._last[1]
        if done <= 0:
            return
        self._last = (completed, now)
        if not self._skipped_first:  # warm-up item: not representative of the steady state
            self._skipped_first = True
            return
        sample = dt / done
        prev = self.seconds_per_item
        self.seconds_per_item = sample if prev is None else prev + self.alpha * (sample - prev)

    @property
    def rate(self) -> float | None:
        spi = self.seconds_per_item
        return None if spi is None else 1.0 / max(spi, 1e-9)

    def eta(self, remaining: float) -> float | None:
        if remaining <= 0:
            return 0.0
        return None if self.seconds_per_item is None else remaining * self.seconds_per_item


class ProgressReport:
    """`with ProgressReport("train", total) as bar: bar(completed, loss=0.12)`.

    A rich bar when interactive, plain lines on stderr otherwise, nothing when quiet. `unit` names the items
    ("step", "prompt") in the plain lines and the rate."""

    def __init__(self, label: str, total: int, start: int = 0, quiet: bool = False, unit: str = "step",
                 live: bool | None = None, every_s: float | None = None):
        self.label, self.total, self.start, self.quiet, self.unit = label, total, start, quiet, unit
        self.live = interactive() if live is None else live
        self.every_s = plain_every_s() if every_s is None else every_s
        self.estimator = RateEstimator()
        self.completed, self.fields = start, {}
        self._printed_at: float | None = None
        self._printed_completed: int | None = None

    def __enter__(self) -> ProgressReport:
        self.estimator.update(self.start, time.perf_counter())
        if self.quiet or not self.live:
            return self
        # lazy: rich's bar only on a terminal: the CLI imports this module before any command
        from rich.progress import BarColumn, Progress, TextColumn

        self._rich = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(),
                              TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"))
        self._rich.__enter__()
        self._task = self._rich.add_task(self.label, total=self.total, completed=self.start, info="")
        return self

    def __call__(self, completed: int, **fields: float) -> None:
        now = time.perf_counter()
        self.estimator.update(completed, now)
        self.completed, self.fields = completed, fields
        if self.quiet:
            return
        if self.live:
            self._rich.update(self._task, completed=completed, info=self.info())
        elif self._printed_at is None or now - self._printed_at >= self.every_s or completed >= self.total:
            self._print_line(now)

    def info(self) -> str:
        """"0.85 steps/s · ETA 5m38s · loss 0.1234" (what is known so far)."""
        rate = self.estimator.rate
        parts = [f"{rate:.2f} {self.unit}s/s" if rate is not None else f"? {self.unit}s/s",
                 f"ETA {format_duration(self.estimator.eta(self.total - self.completed))}"]
        parts += [f"{k} {v:.4g}" for k, v in self.fields.items() if isinstance(v, (int, float))]
        return " · ".join(parts)

    def _print_line(self, now: float) -> None:
        pct = 100.0 * self.completed / max(self.total, 1)
        print(f"{self.label}: {self.unit} {self.completed}/{self.total} ({pct:.0f}%) · {self.info()}",
              file=sys.stderr, flush=True)
        self._printed_at, self._printed_completed = now, self.completed

    def __exit__(self, *exc) -> bool:
        if self.quiet:
            return False
        if self.live:
            self._rich.__exit__(*exc)
        elif self._printed_completed != self.completed and self._printed_at is not None:
            self._print_line(time.perf_counter())  # where it stopped (a finish, an error or an interrupt)
        return False
