"""``payray demo``: a charge, its retry with the same key, a refund payray learns from the PSP's webhook, and
the nightly reconciliation, each shown as the real requests and responses.

It runs against the stack named by ``--url``, the one ``payray up`` recorded under ``PAYRAY_HOME``, or, with
neither, a stack it starts itself (embedded Postgres, Redis and PSP emulator) and stops when done. Exit 0 when
every step behaved as described, 1 naming the step that did not, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.json import JSON
from rich.text import Text

from ops.stack import EMULATOR_API_KEY
from payray.settings import STACK_FILE, Settings, running_stack

AMOUNT = 2500
CURRENCY = "usd"
REFUND_AMOUNT = 1000
#: how long the refund made at the PSP may take to reach payray through the webhook
WEBHOOK_WAIT_S = 30.0
POLL_EVERY_S = 0.25
#: items of a list shown; the rest are counted, not printed
SHOWN_ITEMS = 5
REQUEST_HEADERS = ("Authorization", "Idempotency-Key", "Content-Type")
RESPONSE_HEADERS = ("Idempotent-Replayed", "Request-Id")


class UsageError(Exception):
    """Arguments that cannot name a stack to walk through: exit 2."""


class StepFailed(Exception):
    """A step did not behave as described; the message says what happened instead."""


@dataclass(frozen=True)
class Target:
    url: str
    admin_key: str
    psp_url: str
    merchant_id: str | None = None
    merchant_key: str | None = None


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``payray demo`` command."""
    try:
        target = _resolve(settings, args)
    except UsageError as exc:
        print(f"payray demo: error: {exc}", file=sys.stderr)
        return 2
    console = Console(highlight=False)
    try:
        if target is not None:
            return Walkthrough(console, target).run()
        return _on_own_stack(settings, args, console)
    except KeyboardInterrupt:
        print("payray demo: interrupted", file=sys.stderr)
        return 130


def _resolve(settings: Settings, args: argparse.Namespace) -> Target | None:
    """The stack to walk through, or None when the demo must start one."""
    for flag, value in (("--url", args.url), ("--psp-url", args.psp_url)):
        if value is not None:
            _check_url(flag, value)
    stored = running_stack(settings.home)
    recorded = (stored.get("base_url") or "").rstrip("/")
    if args.url:
        url = args.url.rstrip("/")
        same = url == recorded
        admin_key = args.admin_key or settings.admin_key or (stored.get("admin_key") if same else None)
        if not admin_key:
            raise UsageError("--url needs --admin-key (or PAYRAY_ADMIN_KEY)")
        psp_url = args.psp_url or (stored.get("psp_api_base") if same else None)
        if not psp_url:
            raise UsageError("--url needs --psp-url, the URL of that stack's PSP emulator")
        merchant = _demo_merchant(settings.home) if same else (None, None)
        return Target(url, admin_key, psp_url.rstrip("/"), *merchant)
    if recorded and _answers(recorded):
        admin_key = args.admin_key or settings.admin_key or stored.get("admin_key")
        psp_url = args.psp_url or stored.get("psp_api_base")
        if not admin_key:
            raise UsageError(f"no admin key recorded for the stack at {recorded}; pass --admin-key")
        if not psp_url:
            raise UsageError(f"the stack at {recorded} runs without the PSP emulator; pass --psp-url")
        return Target(recorded, admin_key, psp_url.rstrip("/"), *_demo_merchant(settings.home))
    if args.psp_url:
        raise UsageError("--psp-url names the PSP of a running stack and none is running; pass --url too")
    if settings.psp_api_key:
        raise UsageError(
            "with STRIPE_API_KEY set, a stack started by the demo has no PSP emulator to refund at; "
            "unset it, or pass --url and --psp-url"
        )
    return None


def _check_url(flag: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{flag} must be an http(s) URL, got {value!r}")


def _answers(url: str) -> bool:
    """Whether something listens at ``url``: a recorded stack may have been stopped since."""
    try:
        httpx.get(f"{url}/healthz", timeout=10)
    except httpx.ConnectError:
        return False
    except httpx.HTTPError:
        return True
    return True


def _demo_merchant(home: Path) -> tuple[str | None, str | None]:
    """The demo merchant the stack created and printed (``payray up``), if it left one under ``home``."""
    path = home / "demo_merchant.json"
    try:
        stored = json.loads(path.read_text())
        return str(stored["id"]), str(stored["api_key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _on_own_stack(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    """Start a stack like ``payray up`` (on a free port), walk through it, stop it; the record of any stack
    ``payray up`` left under PAYRAY_HOME is put back as it was."""
    from ops.loopback import free_port
    from ops.stack import Stack

    if args.admin_key:
        settings = settings.with_(admin_key=args.admin_key)
    home = settings.home.resolve()
    stack_file = home / STACK_FILE
    previous = stack_file.read_bytes() if stack_file.exists() else None
    console.print(f"No running stack found: starting one under {home} (stopped when the demo ends).")
    stack = Stack(settings, port=free_port(), say=console.print)
    try:
        try:
            with console.status("starting Postgres, Redis, the PSP emulator, Ray and the API…"):
                info = stack.start()
        except Exception as exc:
            print(f"payray demo: error: could not start the stack: {exc}", file=sys.stderr)
            return 1
        assert info.psp_api_base is not None  # no STRIPE_API_KEY: the stack started the emulator
        console.print(f"The stack is up at {info.base_url}, its PSP emulator at {info.psp_api_base}.")
        target = Target(
            info.base_url, info.admin_key, info.psp_api_base, info.demo_merchant_id, info.demo_key
        )
        return Walkthrough(console, target).run()
    finally:
        with console.status("stopping the stack…"):
            stack.stop()
        if previous is None:
            stack_file.unlink(missing_ok=True)
        elif stack_file.exists():
            stack_file.write_bytes(previous)


def redact_key(key: str) -> str:
    """``sk_test_abc…wxyz`` → ``sk_test_…wxyz``: enough to tell keys apart, not enough to use one."""
    kind = "_".join(key.split("_")[:2]) + "_" if key.startswith("sk_") and key.count("_") >= 2 else ""
    return f"{kind}…{key[-4:]}"


def _redacted_body(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: redact_key(v) if k == "api_key" and isinstance(v, str) else _redacted_body(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redacted_body(v) for v in value]
    return value


class Walkthrough:
    """The steps, in order, against one stack; each one checks what it shows."""

    def __init__(self, console: Console, target: Target, webhook_wait_s: float = WEBHOOK_WAIT_S) -> None:
        self.console = console
        self.target = target
        self.webhook_wait_s = webhook_wait_s
        self.api = httpx.Client(base_url=target.url, timeout=120)
        self.psp = httpx.Client(base_url=target.psp_url, timeout=60)
        self.merchant_key = ""
        self.charge_key = ""
        self.charge_body: dict[str, Any] = {}
        self.first: httpx.Response | None = None
        self.charge: dict[str, Any] = {}
        self.psp_refund: dict[str, Any] = {}

    def run(self) -> int:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("a merchant", self.step_merchant),
            ("a charge with a fresh Idempotency-Key", self.step_charge),
            ("the same request again, with the same key", self.step_retry),
            ("a refund made at the PSP, learned from its webhook", self.step_refund_at_psp),
            ("the nightly reconciliation, run now for today", self.step_reconcile),
            ("the invariants", self.step_invariants),
        ]
        try:
            for number, (title, step) in enumerate(steps, 1):
                self.console.print()
                self.console.rule(Text(f"{number}. {title}", style="bold"))
                try:
                    step()
                except StepFailed as exc:
                    return self._failed(number, title, str(exc))
                except httpx.HTTPError as exc:
                    where = exc.request.url if isinstance(exc, httpx.RequestError) else "the stack"
                    return self._failed(number, title, f"cannot reach {where}: {exc}")
        finally:
            self.api.close()
            self.psp.close()
        self.console.print()
        self.console.print(Text("payray demo: every step behaved as described.", style="bold green"))
        return 0

    def _failed(self, number: int, title: str, message: str) -> int:
        self.console.print(Text(f"payray demo: step {number} ({title}) failed: {message}", style="bold red"))
        return 1

    # -- the steps -------------------------------------------------------------------------------------------

    def step_merchant(self) -> None:
        t = self.target
        if t.merchant_key:
            self.say(f"Reusing the demo merchant {t.merchant_id} the stack created; its key works:")
            balance = self.send(self.api, "GET", "/v1/balance", key=t.merchant_key)
            if balance.status_code == 200:
                self.merchant_key = t.merchant_key
                return
            self.say("The stored demo merchant key was refused; creating a merchant instead.")
        created = self.expect(
            self.send(self.api, "POST", "/v1/merchants", key=t.admin_key, json_body={"name": "payray demo"}),
            200,
        )
        self.merchant_key = str(created["api_key"])
        self.say(f"Merchant {created['id']} created; the next requests use its key.")

    def step_charge(self) -> None:
        self.charge_key = f"demo-{uuid.uuid4().hex}"
        self.charge_body = {
            "amount": AMOUNT,
            "currency": CURRENCY,
            "payment_method": "pm_card_visa",
            "description": "payray demo",
        }
        self.first = self._post_charge()
        charge = self.expect(self.first, 200)
        if charge.get("status") != "succeeded" or not charge.get("psp_reference"):
            raise StepFailed(f"the charge is {charge.get('status')}, not succeeded")
        self.charge = charge
        self.say(f"Charge {charge['id']} succeeded: the PSP captured it as {charge['psp_reference']}.")

    def step_retry(self) -> None:
        assert self.first is not None
        again = self._post_charge()
        self.expect(again, 200)
        replayed = again.headers.get("Idempotent-Replayed")
        if replayed != "true":
            raise StepFailed(f"the retry answered with Idempotent-Replayed: {replayed}, not true")
        if again.content != self.first.content:
            raise StepFailed("the retry's body differs from the first answer's")
        self.say(
            f"Idempotent-Replayed: true, and the body is the first answer's, byte for byte "
            f"({len(again.content)} bytes). Did the PSP capture twice? Its own count:"
        )
        charge_id = self.charge["id"]
        stats = self.expect(
            self.send(self.psp, "GET", "/_emulator/stats", params={"payray_payment_id": charge_id}), 200
        )
        captures = stats.get("captures_by_payray_payment_id", {}).get(charge_id)
        if captures != 1:
            raise StepFailed(f"the PSP counts {captures} captures of {charge_id}, not 1")
        self.say(f"One capture of {charge_id} at the PSP: the retry moved no money.")

    def step_refund_at_psp(self) -> None:
        charge_id, intent = self.charge["id"], self.charge["psp_reference"]
        self.say(f"Refunding {REFUND_AMOUNT} at the PSP directly (its Stripe API, not payray's):")
        refund = self.expect(
            self.send(
                self.psp,
                "POST",
                "/v1/refunds",
                key=EMULATOR_API_KEY,
                data={"payment_intent": intent, "amount": str(REFUND_AMOUNT)},
            ),
            200,
        )
        if refund.get("status") != "succeeded":
            raise StepFailed(f"the PSP's refund is {refund.get('status')}, not succeeded")
        self.psp_refund = refund
        self.say(
            f"The PSP now sends charge.refunded to payray's webhook endpoint; waiting (up to "
            f"{self.webhook_wait_s:.0f} s) for refund {refund['id']} to appear in "
            f"GET /v1/refunds?charge={charge_id}"
        )
        learned = self._await_learned_refund(charge_id, str(refund["id"]))
        self.say(
            f"Refund {learned['id']} ({learned['amount']} {learned['currency']}) learned from the PSP's "
            f"charge.refunded webhook; payray never made it. The charge now:"
        )
        charge = self.expect(
            self.send(self.api, "GET", f"/v1/charges/{charge_id}", key=self.merchant_key), 200
        )
        if charge.get("amount_refunded") != REFUND_AMOUNT:
            raise StepFailed(
                f"{charge_id} has amount_refunded {charge.get('amount_refunded')}, not {REFUND_AMOUNT}"
            )
        self.say(f"amount_refunded: {REFUND_AMOUNT} of {AMOUNT}.")

    def _await_learned_refund(self, charge_id: str, psp_refund_id: str) -> dict[str, Any]:
        """Poll payray's refunds of the charge until the PSP's refund is among them, succeeded; only the last
        poll is shown."""
        started = time.monotonic()
        polls = 0
        while True:
            request, response = self.exchange(
                self.api, "GET", "/v1/refunds", key=self.merchant_key, params={"charge": charge_id}
            )
            polls += 1
            found = None
            if response.status_code == 200:
                try:
                    data = list(response.json()["data"])
                except (ValueError, KeyError, TypeError):
                    data = []
                found = next(
                    (
                        r
                        for r in data
                        if r.get("psp_reference") == psp_refund_id and r.get("status") == "succeeded"
                    ),
                    None,
                )
            waited = time.monotonic() - started
            if found is not None or waited >= self.webhook_wait_s:
                self.show(request, response, note=f"poll {polls}, after {waited:.1f} s")
                if found is None:
                    raise StepFailed(
                        f"the PSP's charge.refunded webhook did not reach payray within "
                        f"{self.webhook_wait_s:.0f} s: "
                        f"no succeeded refund of {charge_id} with psp_reference {psp_refund_id} (does the "
                        f"emulator send its webhooks to {self.target.url}/v1/webhooks/psp?)"
                    )
                return dict(found)
            time.sleep(POLL_EVERY_S)

    def step_reconcile(self) -> None:
        admin = self.target.admin_key
        today = datetime.now(UTC).date().isoformat()
        ours = {self.charge["psp_reference"]: "charge", self.psp_refund["id"]: "refund"}
        for obj in (self.charge, self.psp_refund):
            if datetime.fromtimestamp(int(obj["created"]), UTC).date().isoformat() != today:
                raise StepFailed(f"{obj['id']} is not of today ({today}, UTC): the demo crossed midnight")
        run = self.expect(
            self.send(self.api, "POST", "/v1/reconciliation/runs", key=admin, json_body={"date": today}), 200
        )
        if run.get("status") != "succeeded":
            raise StepFailed(f"run {run.get('id')} {run.get('status')}: {run.get('error')}")
        counts = run["discrepancies"]
        self.say(
            f"Run {run['id']} of {run['date']}: {run['psp_rows']} PSP rows, "
            f"{run['ledger_rows']} ledger rows, {run['matched']} matched, "
            f"{sum(counts.values())} discrepancies "
            f"({', '.join(f'{k} {v}' for k, v in counts.items())})."
        )
        found = self._open_discrepancies(str(run["id"]))
        named = [d for d in found if d.get("reference") in ours]
        if named:
            listed = "; ".join(f"{d['id']} {d['kind']}: {d['detail']}" for d in named)
            raise StepFailed(f"open discrepancies name the demo's charge or refund: {listed}")
        if run["matched"] < len(ours):
            raise StepFailed(f"run {run['id']} matched {run['matched']} rows, fewer than the demo's own")
        others = f" ({len(found)} open ones concern other payments)" if found else ""
        self.say(
            f"The demo's charge {self.charge['psp_reference']} and refund {self.psp_refund['id']} are in "
            f"both the PSP's report and the ledger with equal amounts: matched, no open discrepancy names "
            f"them{others}."
        )

    def _open_discrepancies(self, run_id: str) -> list[dict[str, Any]]:
        """Every open discrepancy of the run; the first page is shown, further pages only counted."""
        params = {"run": run_id, "status": "open", "limit": "100"}
        page = self.expect(
            self.send(
                self.api, "GET", "/v1/reconciliation/discrepancies", key=self.target.admin_key, params=params
            ),
            200,
        )
        found: list[dict[str, Any]] = list(page["data"])
        pages = 1
        while page.get("has_more") and found:
            params["starting_after"] = found[-1]["id"]
            _, response = self.exchange(
                self.api, "GET", "/v1/reconciliation/discrepancies", key=self.target.admin_key, params=params
            )
            page = self.expect(response, 200)
            found += page["data"]
            pages += 1
        if pages > 1:
            self.say(
                f"({pages - 1} further page(s) fetched, not shown: {len(found)} open discrepancies in all)"
            )
        return found

    def step_invariants(self) -> None:
        report = self.expect(
            self.send(self.api, "GET", "/v1/admin/invariants", key=self.target.admin_key), 200
        )
        if report.get("ok") is not True:
            raise StepFailed(f"the invariants do not hold: {json.dumps(report)}")
        self.say("ok: no double capture, the ledger balances, wallets match it, and the PSP agrees with it.")

    # -- requests, shown as sent and received ----------------------------------------------------------------

    def _post_charge(self) -> httpx.Response:
        return self.send(
            self.api,
            "POST",
            "/v1/charges",
            key=self.merchant_key,
            json_body=self.charge_body,
            idempotency_key=self.charge_key,
        )

    def exchange(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
    ) -> tuple[httpx.Request, httpx.Response]:
        headers = {}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        request = client.build_request(
            method, path, params=params, json=json_body, data=data, headers=headers
        )
        return request, client.send(request)

    def send(self, client: httpx.Client, method: str, path: str, **options: Any) -> httpx.Response:
        request, response = self.exchange(client, method, path, **options)
        self.show(request, response)
        return response

    def expect(self, response: httpx.Response, status: int) -> dict[str, Any]:
        """The response's JSON object when it has ``status``; otherwise the step fails with the API's word."""
        path = response.request.url.path
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != status or not isinstance(body, dict):
            message = response.text[:300]
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                message = str(body["error"].get("message"))
            elif isinstance(body, dict) and "status" in body:
                message = f"status {body['status']}"
            raise StepFailed(f"{response.request.method} {path} answered {response.status_code}: {message}")
        return body

    def say(self, text: str) -> None:
        self.console.print(Text(text, style="bold cyan"))

    def show(self, request: httpx.Request, response: httpx.Response, note: str = "") -> None:
        out = self.console
        out.print(Text(f"→ {request.method} {request.url}", style="bold"))
        for name in REQUEST_HEADERS:
            value = request.headers.get(name)
            if value is None:
                continue
            if name == "Authorization" and value.startswith("Bearer "):
                value = "Bearer " + redact_key(value[len("Bearer ") :])
            out.print(Text(f"  {name}: {value}"))
        if request.content:
            self._body(request.content, request.headers.get("Content-Type", ""))
        elapsed = f"{response.elapsed.total_seconds() * 1000:.0f} ms"
        status = f"← {response.status_code} {response.reason_phrase} ({elapsed}{', ' + note if note else ''})"
        out.print(Text(status, style="bold green" if response.is_success else "bold red"))
        for name in RESPONSE_HEADERS:
            if (value := response.headers.get(name)) is not None:
                out.print(
                    Text(f"  {name}: {value}", style="bold yellow" if name == "Idempotent-Replayed" else "")
                )
        self._body(response.content, response.headers.get("Content-Type", ""))

    def _body(self, content: bytes, content_type: str) -> None:
        """JSON pretty-printed (keys shortened as in headers, long lists cut with a count); anything else as
        text."""
        text = content.decode("utf-8", "replace")
        if "json" not in content_type:
            self.console.print(Text("  " + text[:2000]))
            return
        try:
            body = json.loads(text)
        except ValueError:
            self.console.print(Text("  " + text[:2000]))
            return
        hidden = 0
        if isinstance(body, dict) and isinstance(body.get("data"), list) and len(body["data"]) > SHOWN_ITEMS:
            hidden = len(body["data"]) - SHOWN_ITEMS
            body = {**body, "data": body["data"][:SHOWN_ITEMS]}
        lines = JSON.from_data(_redacted_body(body), indent=2).text.split("\n")
        self.console.print(Text("\n").join(Text("  ") + line for line in lines))
        if hidden:
            self.console.print(Text(f"  … and {hidden} more item(s) of data, not shown"))
