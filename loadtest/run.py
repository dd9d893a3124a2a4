"""``payray loadtest``: Locust headless against a running stack, then the invariants.

Locust runs in its own process: it monkey-patches the standard library with gevent, which must not happen
to the caller.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtest.options import MAX_RUN_TIME_S

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
_TIMESPAN = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_run_time(text: str) -> int:
    """Seconds in ``90``, ``90s``, ``2m``, ``1h30m``: bounded to an hour, as every load run must be."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        match = _TIMESPAN.match(text)
        if not text or match is None:
            raise ValueError(f"run time must look like 60, 60s, 2m or 1h30m, got {text!r}")
        hours, minutes, secs = (int(g or 0) for g in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if not 1 <= seconds <= MAX_RUN_TIME_S:
        raise ValueError(f"run time must be 1 s to {MAX_RUN_TIME_S} s, got {seconds} s")
    return seconds


@dataclass(frozen=True)
class LoadRun:
    url: str
    users: int
    spawn_rate: float
    run_time_s: int
    shape: str
    psp_faults: str
    merchants: int
    csv_prefix: str | None = None
    html_file: str | None = None
    refund_share: float = 0.1

    def command(self) -> list[str]:
        """Locust's command line for this run (the admin key travels in the environment, not in argv)."""
        argv = [
            sys.executable, "-m", "locust",
            "-f", str(LOCUSTFILE),
            "--headless", "--only-summary",
            "--host", self.url,
            "--users", str(self.users),
            "--spawn-rate", str(self.spawn_rate),
            "--run-time", f"{self.run_time_s}s",
            "--stop-timeout", "10",
            "--shape", self.shape,
            "--psp-faults", self.psp_faults,
            "--merchants", str(self.merchants),
            "--refund-share", str(self.refund_share),
        ]  # fmt: skip
        if self.csv_prefix:
            argv += ["--csv", self.csv_prefix]
        if self.html_file:
            argv += ["--html", self.html_file]
        return argv
