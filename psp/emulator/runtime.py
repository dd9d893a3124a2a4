"""The emulator's parts wired together, independent of the HTTP server that drives them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from psp.emulator.clock import Clock
from psp.emulator.drift import SettlementDrift
from psp.emulator.engine import Engine
from psp.emulator.faults import FaultConfig, Faults
from psp.emulator.idempotency import IdempotencyTable
from psp.emulator.reports import ReportRuns
from psp.emulator.store import Journal, Store
from psp.emulator.webhooks import WebhookSender


@dataclass
class Emulator:
    store: Store
    clock: Clock
    engine: Engine
    idempotency: IdempotencyTable
    faults: Faults
    webhooks: WebhookSender
    drift: SettlementDrift
    reports: ReportRuns
    api_key: str | None = None

    @classmethod
    def create(cls, data_dir: Path | None = None, api_key: str | None = None) -> Emulator:
        """Replays the journal in ``data_dir`` (memory only when None); report files go in ``reports/``."""
        clock = Clock()
        store = Store(Journal(data_dir) if data_dir is not None else None)
        engine = Engine(store, clock)
        webhooks = WebhookSender()
        engine.subscribe(webhooks.on_event)
        drift = SettlementDrift()
        reports = ReportRuns(store, clock, drift, data_dir / "reports" if data_dir is not None else None)
        return cls(
            store=store,
            clock=clock,
            engine=engine,
            idempotency=IdempotencyTable(store),
            faults=Faults(),
            webhooks=webhooks,
            drift=drift,
            reports=reports,
            api_key=api_key,
        )

    def reset(self) -> None:
        """Forget every object, key, fault, drift, report file and clock override; truncates the journal."""
        self.store.reset()
        self.drift.clear()
        self.reports.reset()
        self.idempotency.clear_in_flight()
        self.faults.configure(FaultConfig())
        self.faults.clear_record()
        self.webhooks.configure(None)
        self.clock.set(None)


EMULATOR = web.AppKey("emulator", Emulator)
