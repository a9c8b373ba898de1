"""Progress of a long loop as plain log lines: items done out of the total, the rate and the time left.

A job's log is a file that people follow with `tail -f` on a cluster: a tqdm bar, redrawn in place with
carriage returns, turns it into one unreadable line, so sampling and scoring log a whole line now and then
instead, through `logging` (logger "dti.progress"), e.g.

    sampled 128/2,624 images (4.9 images/s, about 8 min left)
    sampled 2,624/2,624 images in 9 min 2 s (4.8 images/s)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# Often enough that a look at a job's log tells a live job from a stuck one within a minute; rare enough
# that a 10-hour job adds about 1,200 lines to its log.
EVERY_S = 30.0

log = logging.getLogger(__name__)


class ProgressLog:
    """Log "{verb} {done}/{total} {what} ({rate} {what}/s, about {time} left)" from `advance` at most once
    per `every_s` seconds (0: at every advance), and, when the last item is done, always the closing line
    "{verb} {total}/{total} {what} in {time} ({rate} {what}/s)". The rate is the mean since the start
    (construction), so a slow first batch (loading, compiling) weighs on it less and less."""

    def __init__(self, verb: str, total: int, *, what: str = "images", every_s: float = EVERY_S,
                 logger: logging.Logger = log, clock: Callable[[], float] = time.monotonic):
        self.verb, self.total, self.what, self.every_s = verb, total, what, every_s
        self.logger, self.clock = logger, clock
        self.done = 0
        self.start = self.last_line = clock()

    def advance(self, n: int = 1) -> None:
        """Count `n` more items done (0: nothing happened, nothing is logged)."""
        if n <= 0:
            return
        self.done += n
        now = self.clock()
        elapsed = now - self.start
        # Without elapsed time (a clock that did not move) there is no rate to tell.
        rate = self.done / elapsed if elapsed > 0 else None
        counts = f"{self.verb} {self.done:,}/{self.total:,} {self.what}"
        if self.done >= self.total:
            speed = f" ({rate_text(rate)} {self.what}/s)" if rate else ""
            self.logger.info("%s in %s%s", counts, duration(elapsed), speed)
        elif now - self.last_line >= self.every_s:
            self.last_line = now
            if rate:
                left = duration((self.total - self.done) / rate, rough=True)
                self.logger.info("%s (%s %s/s, about %s left)", counts, rate_text(rate), self.what, left)
            else:
                self.logger.info("%s", counts)


def rate_text(rate: float) -> str:
    """Two significant digits below 10 a second (4.9, 0.35), whole numbers above (1,240)."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


def duration(seconds: float, *, rough: bool = False) -> str:
    """'42 s', '9 min 2 s', '3 h 5 min'; `rough` (an estimate) leaves out the seconds of minutes: '9 min'."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600 and not rough:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
