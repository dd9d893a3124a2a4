"""Merchants' backends charging through payray, as Locust users: ``locust -f loadtest/locustfile.py``.

Each user is one merchant's backend. It charges with a fresh idempotency key; when the answer does not come
(client timeout, connection error) or says "try again" (409 in flight, 5xx), it retries with the *same* key
after a jittered backoff, as Stripe's clients do. A share of its settled charges it sends once more with the
same key, as a client that lost the response would, and checks the replay is the first answer byte for byte.
It refunds a share of its succeeded charges (all or part, retried with the same key like a charge) and reads
its balance. Payray options (each also an environment variable):

    --shape steady|ramp|spike      PAYRAY_LOAD_SHAPE      how users come and go over --run-time
    --merchants N                  PAYRAY_LOAD_MERCHANTS  merchants created for the run (users share them)
    --psp-faults PROFILE           PAYRAY_PSP_FAULTS      none, latency, flaky, timeouts, chaos,
                                                          stripe_outage, stripe_outage_reset
    --charge-weight / --balance-weight                    the mix of tasks
    --replay-share, --refund-share, --client-timeout, --max-retries, --max-fail-ratio
    --request-log FILE             PAYRAY_LOAD_REQUEST_LOG  every request as a JSON line (``payray chaos``)
    --charge-report FILE           PAYRAY_LOAD_CHARGE_REPORT  charges by PSP and outcome, as JSON

An outage profile routes the run's merchants over both PSPs (through the admin API, as they are created) and
takes one PSP down for a window placed when the run starts. At the end the run logs its charges by PSP (read
from each answer's ``psp_reference``), before, during and after the window.

The admin key (to create merchants) and the emulator's URL come from ``--admin-key`` / ``--psp-url`` or
from the ``stack.json`` that ``payray up`` leaves under ``PAYRAY_HOME``. Loopback hosts only; runs are
bounded (``--run-time`` defaults to 60 s; see ``loadtest.options`` for the ceilings).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import IO, Any

import gevent.pool
import requests
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from loadtest.options import DEFAULT_RUN_TIME_S, add_arguments, check_options
from loadtest.profiles import PROFILES, FaultProfile, phase, psp_of
from loadtest.shapes import SHAPES
from payray.settings import running_stack

log = logging.getLogger("payray.loadtest")

PAYMENT_METHODS = ("pm_card_visa",) * 18 + (
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
)
CURRENCIES = ("usd", "usd", "usd", "eur", "jpy")
#: Statuses that settle a charge: a replay must answer them byte for byte.
SETTLED = (200, 402)
#: Statuses a client retries with the same key: the outcome is not known yet.
RETRYABLE = (0, 409, 429, 500, 502, 503, 504)
#: Refund answers that are not failures of payray: done or pending. A 400 ``balance_insufficient`` is not one
#: either: the merchant's balance, drawn down by its other refunds, does not cover this one.
REFUND_ANSWERS = (200, 202)

_merchant_keys: list[str] = []
_merchant_ids: list[str] = []
_next_merchant = itertools.count()
_request_log: list[IO[str]] = []
#: The outage window of this run in unix seconds, once placed at its start (empty: none).
_outage_window: list[tuple[float, float]] = []
#: Charges by (phase, outcome): the PSP that made a succeeded one, else declined (and why), pending or failed.
_charges: Counter[tuple[str, str]] = Counter()


@events.init_command_line_parser.add_listener
def _payray_options(parser: Any) -> None:
    add_arguments(parser)


def _options(environment: Environment) -> Any:
    """The parsed command line; the listeners below only run under Locust's own command line."""
    assert environment.parsed_options is not None
    return environment.parsed_options


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library, without Locust's command line
        return
    stored = running_stack()
    options.host = options.host or stored.get("base_url")
    environment.host = options.host
    options.admin_key = options.admin_key or stored.get("admin_key")
    options.psp_url = options.psp_url or stored.get("psp_api_base")
    options.run_time = options.run_time or DEFAULT_RUN_TIME_S
    options.num_users = options.num_users or 1
    options.spawn_rate = options.spawn_rate or options.num_users
    problems = check_options(options)
    if problems:
        for problem in problems:
            log.error(problem)
        raise SystemExit(2)
    if options.request_log:
        _request_log[:] = [open(options.request_log, "a", buffering=1)]  # noqa: SIM115 (open for the run)
    MerchantBackend.network_timeout = options.client_timeout
    MerchantBackend.connection_timeout = options.client_timeout
    if not isinstance(environment.runner, MasterRunner):  # a master runs no users
        try:
            created = _create_merchants(options)
            _merchant_ids[:] = [merchant_id for merchant_id, _ in created]
            _merchant_keys[:] = [key for _, key in created]
            _route_merchants(options, PROFILES[options.psp_faults], _merchant_ids)
        except requests.RequestException as exc:
            log.error("cannot create the run's merchants at %s (is the stack up?): %s", options.host, exc)
            raise SystemExit(2) from None


def _create_merchants(options: Any) -> list[tuple[str, str]]:
    """The run's merchants (id, API key), created through the API before the clock starts (each opens its
    wallet)."""
    admin = {"Authorization": f"Bearer {options.admin_key}"}
    run = uuid.uuid4().hex[:6]

    def create(i: int) -> tuple[str, str] | requests.RequestException:
        try:
            response = requests.post(
                f"{options.host}/v1/merchants", json={"name": f"load-{run}-{i}"}, headers=admin, timeout=120
            )
            response.raise_for_status()
        except requests.RequestException as exc:  # returned, not raised: gevent would print each one
            return exc
        merchant = response.json()
        return str(merchant["id"]), str(merchant["api_key"])

    created = list(gevent.pool.Pool(8).imap(create, range(options.merchants)))
    for outcome in created:
        if isinstance(outcome, requests.RequestException):
            raise outcome
    return [outcome for outcome in created if not isinstance(outcome, requests.RequestException)]


def _route_merchants(options: Any, profile: FaultProfile, merchant_ids: list[str]) -> None:
    """Give the run's merchants the profile's PSP order before the clock starts, so the outage finds them
    routed over both PSPs."""
    if profile.routing is None:
        return
    admin = {"Authorization": f"Bearer {options.admin_key}"}
    for merchant_id in merchant_ids:
        requests.post(
            f"{options.host}/v1/admin/merchants/{merchant_id}/routing",
            json={"psps": list(profile.routing)},
            headers=admin,
            timeout=60,
        ).raise_for_status()


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    options = _options(environment)
    profile = PROFILES[options.psp_faults]
    started_at = time.time()
    if options.psp_url:
        for faults in profile.fault_settings(started_at, float(options.run_time)):
            requests.post(f"{options.psp_url}/_emulator/faults", json=faults, timeout=10).raise_for_status()
    if profile.outage is not None:
        _outage_window[:] = [profile.outage.window(started_at, float(options.run_time))]
        start, end = _outage_window[0]
        log.info(
            "%s down (%s) from %.1f s to %.1f s of the run; merchants route %s",
            profile.outage.psp, profile.outage.mode, start - started_at, end - started_at,
            " > ".join(profile.routing or ()),
        )  # fmt: skip
    log.info("%d merchants, PSP faults %r", len(_merchant_keys), options.psp_faults)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    options = _options(environment)
    if options.psp_url and options.psp_faults != "none":
        requests.delete(f"{options.psp_url}/_emulator/faults", timeout=10).raise_for_status()
    _report_charges(options)


def _report_charges(options: Any) -> None:
    """The run's charges by phase and outcome, logged and (``--charge-report``) written as JSON: where the
    PSP's outage sent them is what an outage run is about."""
    by_phase: dict[str, dict[str, int]] = {}
    for (when, outcome), count in sorted(_charges.items()):
        by_phase.setdefault(when, {})[outcome] = count
    for when, outcomes in by_phase.items():
        log.info("charges %s: %s", when, ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    if options.charge_report:
        profile = PROFILES[options.psp_faults]
        outage = None
        if profile.outage is not None and _outage_window:
            start, end = _outage_window[0]
            outage = {"psp": profile.outage.psp, "mode": profile.outage.mode, "start": start, "end": end}
        report = {
            "profile": options.psp_faults,
            "routing": list(profile.routing) if profile.routing else None,
            "outage": outage,
            "merchants": list(_merchant_ids),
            "charges": by_phase,
        }
        Path(options.charge_report).write_text(json.dumps(report, indent=2))


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    """The run fails when more requests failed than the fault profile allows, or the users themselves broke.

    Within the allowance, failed requests are the service answering a faulty PSP correctly: Locust's own
    rule (any failure exits 1) would make every fault run fail.
    """
    options = _options(environment)
    allowed = options.max_fail_ratio
    if allowed is None:
        allowed = PROFILES[options.psp_faults].max_fail_ratio
    ratio = environment.stats.total.fail_ratio
    broken = environment.runner is not None and bool(environment.runner.exceptions)
    if ratio > allowed:
        log.error("%.2f %% of requests failed; at most %.2f %% allowed", 100 * ratio, 100 * allowed)
    environment.process_exit_code = 1 if ratio > allowed or broken else 0


class MerchantBackend(FastHttpUser):
    """One merchant's backend: charges and refunds (retrying with the same key), replays, balance reads."""

    #: verify the API's certificate over HTTPS, as a merchant's SDK does (SSL_CERT_FILE's CAs when set)
    insecure = False

    def on_start(self) -> None:
        options = _options(self.environment)
        self.api_key = _merchant_keys[next(_next_merchant) % len(_merchant_keys)]
        self.options = options
        self.headers = {"Authorization": f"Bearer {self.api_key}"}

    @task
    def act(self) -> None:
        o = self.options
        if random.random() * (o.charge_weight + o.balance_weight) < o.charge_weight:
            self.charge()
        else:
            self.client.get("/v1/balance", headers=self.headers, name="GET /v1/balance")

    def charge(self) -> None:
        body = {
            "amount": random.randint(100, 100_000),
            "currency": random.choice(CURRENCIES),
            "payment_method": random.choice(PAYMENT_METHODS),
            "description": "load test",
        }
        sent = time.time()
        key, status, payload = self._post_until_known("/v1/charges", body, (200, 202, 402))
        _count_charge(sent, status, payload)
        if status in SETTLED and random.random() < self.options.replay_share:
            self._replay(key, body, status, payload)
        if status == 200 and random.random() < self.options.refund_share:
            charge = json.loads(payload)
            amount = charge["amount"] if random.random() < 0.5 else random.randint(1, charge["amount"])
            self._post_until_known("/v1/refunds", {"charge": charge["id"], "amount": amount}, REFUND_ANSWERS)

    def _post_until_known(
        self, path: str, body: dict[str, Any], answers: tuple[int, ...]
    ) -> tuple[str, int, bytes]:
        """POST with a fresh key, then again with the same key while the outcome is unknown."""
        key = uuid.uuid4().hex
        status, payload = self._send(path, key, body, f"POST {path}", answers)
        for attempt in range(1, self.options.max_retries + 1):
            if status not in RETRYABLE:
                break
            time.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5))
            status, payload = self._send(path, key, body, f"POST {path} [retry, same key]", answers)
        return key, status, payload

    def _send(
        self, path: str, key: str, body: dict[str, Any], name: str, answers: tuple[int, ...]
    ) -> tuple[int, bytes]:
        headers = {**self.headers, "Idempotency-Key": key}
        sent = time.time()
        with self.client.post(path, json=body, headers=headers, name=name, catch_response=True) as response:
            status = response.status_code or 0
            text = response.text or ""
            ok = status in answers or (status == 400 and '"balance_insufficient"' in text)
            if ok:
                response.success()
            else:
                response.failure(f"HTTP {status}: {(text or response.error or '')!s:.200}")
            if _request_log:
                _log_request(name, key, sent, status, ok, text)
            return status, response.content or b""

    def _replay(self, key: str, body: dict[str, Any], status: int, payload: bytes) -> None:
        headers = {**self.headers, "Idempotency-Key": key}
        with self.client.post(
            "/v1/charges", json=body, headers=headers, name="POST /v1/charges [replay]", catch_response=True
        ) as response:
            if response.status_code != status or response.content != payload:
                response.failure(f"replay differs: {response.status_code} vs {status}")
            elif response.headers.get("Idempotent-Replayed") != "true":
                response.failure("replay without Idempotent-Replayed: true")
            else:
                response.success()


def _count_charge(sent: float, status: int, payload: bytes) -> None:
    """One charge's final answer, by when it was first sent: the PSP that made it if it succeeded, the
    reason if it was declined (a PSP that does not take the currency declines too)."""
    outcome = {202: "pending", 402: "declined"}.get(status, "failed")
    with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
        if status == 200:
            outcome = psp_of(json.loads(payload).get("psp_reference")) or "succeeded"
        elif status == 402:
            outcome = f"declined {json.loads(payload)['error']['decline_code']}"
    _charges[(phase(sent, _outage_window[0] if _outage_window else None), outcome)] += 1


def _log_request(name: str, key: str, sent: float, status: int, ok: bool, text: str) -> None:
    """One line of the request log: what the client sent, what it saw, and the object a 200 made."""
    made = None
    if status == 200:
        with contextlib.suppress(ValueError, AttributeError):
            made = json.loads(text).get("id")
    line = {
        "op": name.split(" [")[0],
        "retry": "[retry" in name,
        "key": key,
        "sent": sent,
        "answered": time.time(),
        "status": status,
        "ok": ok,
        "object_id": made,
    }
    _request_log[0].write(json.dumps(line) + "\n")


class PayrayShape(LoadTestShape):
    """The ``--shape`` chosen on the command line, within ``--users``, ``--spawn-rate`` and ``--run-time``."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = _options(self.runner.environment)
        return SHAPES[options.shape](
            self.get_run_time(), options.num_users, options.spawn_rate, float(options.run_time)
        )
