"""A fresh ``payray up`` listens on loopback only: a single machine offers its network nothing.

Lists every listening TCP socket and every bound UDP socket of the stack's processes (its process tree and
whatever else carries its PAYRAY_HOME, such as the daemonized Postgres) once the stack has served a charge,
and fails on any bound off 127.0.0.0/8 and ::1. HAProxy's admin socket must be its owner's alone.
"""

from __future__ import annotations

import stat
import time
import uuid
from pathlib import Path

import httpx
import psutil

from ops.loopback import free_port, is_loopback
from ops.stack import haproxy_available
from tests.e2e.running_up import RunningUp

#: Serve starts some actors (wallet hosts, the notification consumer) a little after it says it is up.
SETTLE_S = 10


def test_payray_up_listens_on_loopback_only(tmp_path: Path) -> None:
    home = tmp_path / "payray-home"
    up = RunningUp(home, free_port())
    try:
        up.wait_until_up()
        url, key = up.fields["url"], up.fields["demo merchant key"]
        charge = httpx.post(
            f"{url}/v1/charges",
            data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex},
            timeout=60,
        )
        assert charge.status_code == 200, charge.text
        time.sleep(SETTLE_S)
        processes = _stack_processes(up.process.pid, home)
        sockets = _bound_sockets(processes)
        off_loopback = [entry for entry in sockets if not is_loopback(entry[1])]
        print(f"{len(sockets)} bound sockets, {len(off_loopback)} off loopback")
        assert len(sockets) >= 5, f"too few sockets seen to judge: {sockets}"
        assert off_loopback == [], "\n".join(f"{name} on {ip}:{port}" for name, ip, port in off_loopback)
        haproxy = [p for p in processes if p.name() == "haproxy"]
        assert bool(haproxy) == haproxy_available()
        for process in haproxy:
            admin_socket = _admin_socket(process)
            assert stat.S_IMODE(admin_socket.stat().st_mode) & 0o077 == 0, f"{admin_socket} is not owner-only"
    finally:
        assert up.interrupt() == 0, "".join(up.output)


def _stack_processes(root_pid: int, home: Path) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    for process in psutil.process_iter():
        try:
            if process.pid not in found and process.environ().get("PAYRAY_HOME") == str(home):
                found[process.pid] = process
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return list(found.values())


def _bound_sockets(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of each listening TCP socket and each unconnected UDP socket."""
    names = {}
    for process in processes:
        try:
            names[process.pid] = " ".join(process.cmdline()[:2]) or process.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    bound = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid not in names:
            continue
        listening = conn.status == psutil.CONN_LISTEN or (conn.status == psutil.CONN_NONE and not conn.raddr)
        if listening:
            bound.append((names[conn.pid], conn.laddr.ip, conn.laddr.port))
    return bound


def _admin_socket(haproxy: psutil.Process) -> Path:
    """The ``stats socket`` named in the config HAProxy was started with (``-f``)."""
    args = haproxy.cmdline()
    config = Path(args[args.index("-f") + 1]).read_text()
    line = next(line for line in config.splitlines() if line.strip().startswith("stats socket "))
    return Path(line.split()[2])
