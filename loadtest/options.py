"""The payray options of a load run, and their checks: loopback only, bounded in users and time.

Kept apart from the locustfile, which imports Locust (and with it gevent's monkey-patching).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from loadtest.profiles import PROFILES
from loadtest.shapes import SHAPES

MAX_USERS = 2000
MAX_MERCHANTS = 1000
DEFAULT_RUN_TIME_S = 60
MAX_RUN_TIME_S = 3600


def add_arguments(parser: Any) -> None:
    """Payray's options on Locust's parser; each can also come from its environment variable."""
    group = parser.add_argument_group("payray")
    group.add_argument("--shape", choices=sorted(SHAPES), default="steady", env_var="PAYRAY_LOAD_SHAPE")
    group.add_argument("--merchants", type=int, default=4, env_var="PAYRAY_LOAD_MERCHANTS")
    group.add_argument("--psp-faults", choices=sorted(PROFILES), default="none", env_var="PAYRAY_PSP_FAULTS")
    group.add_argument("--charge-weight", type=float, default=9.0, env_var="PAYRAY_LOAD_CHARGE_WEIGHT")
    group.add_argument("--balance-weight", type=float, default=1.0, env_var="PAYRAY_LOAD_BALANCE_WEIGHT")
    group.add_argument("--replay-share", type=float, default=0.05, env_var="PAYRAY_LOAD_REPLAY_SHARE")
    group.add_argument("--refund-share", type=float, default=0.1, env_var="PAYRAY_LOAD_REFUND_SHARE")
    group.add_argument("--client-timeout", type=float, default=5.0, env_var="PAYRAY_LOAD_CLIENT_TIMEOUT")
    group.add_argument("--max-retries", type=int, default=3, env_var="PAYRAY_LOAD_MAX_RETRIES")
    group.add_argument("--max-fail-ratio", type=float, default=None, env_var="PAYRAY_LOAD_MAX_FAIL_RATIO")
    group.add_argument("--admin-key", default=None, env_var="PAYRAY_ADMIN_KEY")
    group.add_argument("--psp-url", default=None, env_var="PAYRAY_PSP_URL")
    group.add_argument(
        "--request-log",
        default=None,
        env_var="PAYRAY_LOAD_REQUEST_LOG",
        help="append every request (times, status, key, the object it made) to this file as JSON lines",
    )
    group.add_argument(
        "--charge-report",
        default=None,
        env_var="PAYRAY_LOAD_CHARGE_REPORT",
        help="write the charges by PSP and outcome, the merchants and the outage window to this JSON file",
    )


def is_loopback(url: str) -> bool:
    """True when every address the URL's host resolves to is a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_run(
    host: str | None,
    psp_url: str | None,
    users: int,
    spawn_rate: float,
    run_time_s: int | None,
    merchants: int,
    psp_faults: str,
) -> list[str]:
    """The bounds every run keeps, however it is started: loopback targets, users, time and merchants."""
    problems = []
    if not host or not is_loopback(host):
        problems.append(f"the target must be a loopback URL (127.0.0.1, ::1, localhost), got {host!r}")
    if psp_url and not is_loopback(psp_url):
        problems.append(f"--psp-url must be a loopback URL, got {psp_url!r}")
    if not 1 <= users <= MAX_USERS:
        problems.append(f"--users must be 1..{MAX_USERS}, got {users}")
    if not 0 < spawn_rate <= MAX_USERS:
        problems.append(f"--spawn-rate must be in (0, {MAX_USERS}], got {spawn_rate}")
    if not 1 <= (run_time_s or 0) <= MAX_RUN_TIME_S:
        problems.append(f"--run-time must be 1 s to {MAX_RUN_TIME_S} s, got {run_time_s}")
    if not 1 <= merchants <= MAX_MERCHANTS:
        problems.append(f"--merchants must be 1..{MAX_MERCHANTS}, got {merchants}")
    if psp_faults != "none" and not psp_url:
        problems.append("--psp-faults needs the emulator's URL: pass --psp-url or set PAYRAY_PSP_URL")
    return problems


def check_options(options: Any) -> list[str]:
    """What is wrong with Locust's parsed options, as one line each (empty: go)."""
    problems = check_run(
        options.host,
        options.psp_url,
        options.num_users,
        options.spawn_rate,
        options.run_time,
        options.merchants,
        options.psp_faults,
    )
    if (
        options.charge_weight < 0
        or options.balance_weight < 0
        or options.charge_weight + options.balance_weight == 0
    ):
        problems.append("--charge-weight and --balance-weight must be >= 0, not both 0")
    if not 0 <= options.replay_share <= 1:
        problems.append(f"--replay-share must be in [0, 1], got {options.replay_share}")
    if not 0 <= options.refund_share <= 1:
        problems.append(f"--refund-share must be in [0, 1], got {options.refund_share}")
    if options.client_timeout <= 0 or options.max_retries < 0:
        problems.append("--client-timeout must be > 0 and --max-retries >= 0")
    if options.max_fail_ratio is not None and not 0 <= options.max_fail_ratio <= 1:
        problems.append(f"--max-fail-ratio must be in [0, 1], got {options.max_fail_ratio}")
    if not options.admin_key:
        problems.append(
            "no admin key: pass --admin-key, set PAYRAY_ADMIN_KEY, or start the stack with `payray up`"
        )
    return problems
