"""Stripe's report runs and files: a run is created ``pending``, built off the event loop, then ``succeeded``.

The run and file objects go through the store (so a journaled emulator keeps them); the CSV itself lives on
disk, under the data directory, or a temporary one for a memory-only emulator.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psp.emulator.clock import Clock
from psp.emulator.drift import SettlementDrift
from psp.emulator.errors import invalid, missing, no_such
from psp.emulator.ids import new_id
from psp.emulator.params import reject_unknown
from psp.emulator.settlement import COLUMNS, DAY_S, REPORT_TYPE, Plan, days_between, write_report
from psp.emulator.store import Obj, Store

log = logging.getLogger(__name__)

TIMEZONES = ("UTC", "Etc/UTC")
MAX_DAYS = 366
FILE_LIFETIME_S = 365 * DAY_S


@dataclass(frozen=True)
class ReportParameters:
    interval_start: int
    interval_end: int
    columns: tuple[str, ...]
    timezone: str

    def to_json(self) -> Obj:
        return {
            "interval_start": self.interval_start,
            "interval_end": self.interval_end,
            "columns": list(self.columns),
            "timezone": self.timezone,
        }


def _int_param(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    param = f"parameters[{name}]"
    if value is None or value == "":
        raise missing(param)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise invalid(f"Invalid integer: {value}", param=param)


def parse_parameters(params: dict[str, Any]) -> ReportParameters:
    """``report_type`` and ``parameters[...]`` as Stripe takes them, limited to whole UTC days."""
    reject_unknown(params, ("report_type", "parameters"))
    report_type = params.get("report_type")
    if report_type is None or report_type == "":
        raise missing("report_type")
    if report_type != REPORT_TYPE:
        raise invalid(
            f"Invalid report_type: {report_type}. This emulator runs only {REPORT_TYPE}.", param="report_type"
        )
    raw = params.get("parameters")
    if raw is None:
        raise missing("parameters[interval_start]")
    if not isinstance(raw, dict):
        raise invalid("Invalid parameters: must be a hash", param="parameters")
    for name in raw:
        if name not in ("interval_start", "interval_end", "columns", "timezone"):
            raise invalid(
                f"Received unsupported parameter: parameters[{name}]",
                param=f"parameters[{name}]",
                code="parameter_unknown",
            )
    start = _int_param(raw, "interval_start")
    end = _int_param(raw, "interval_end")
    if start % DAY_S:
        raise invalid(
            "parameters[interval_start] must be a midnight (00:00:00 UTC).",
            param="parameters[interval_start]",
        )
    if end <= start or (end - start) % DAY_S or (end - start) // DAY_S > MAX_DAYS:
        raise invalid(
            f"parameters[interval_end] must be 1 to {MAX_DAYS} whole days (multiples of 86400 s) after "
            "parameters[interval_start].",
            param="parameters[interval_end]",
        )
    columns = _columns(raw.get("columns"))
    timezone = raw.get("timezone") or "Etc/UTC"
    if timezone not in TIMEZONES:
        raise invalid(
            f"Invalid timezone: {timezone}. This emulator reports in UTC only.", param="parameters[timezone]"
        )
    return ReportParameters(start, end, columns, timezone)


def _columns(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return COLUMNS
    if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
        raise invalid("Invalid parameters[columns]: must be a non-empty array of strings", param="parameters")
    for column in raw:
        if column not in COLUMNS:
            raise invalid(
                f"Invalid column: {column}. Known columns: {', '.join(COLUMNS)}.", param="parameters[columns]"
            )
    if len(set(raw)) != len(raw):
        raise invalid("parameters[columns] names a column twice.", param="parameters[columns]")
    return tuple(raw)


def render_file(file: Obj, base_url: str) -> Obj:
    """The File object; its ``url`` points at this emulator as the caller reached it."""
    out = {k: v for k, v in file.items() if not k.startswith("_")}
    out["url"] = f"{base_url}/v1/files/{file['id']}/contents"
    return out


class ReportRuns:
    """Creates runs, builds their CSVs in a worker thread, and serves runs, files and file contents."""

    def __init__(self, store: Store, clock: Clock, drift: SettlementDrift, directory: Path | None) -> None:
        self.store = store
        self.clock = clock
        self.drift = drift
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="psp-emulator-reports-"))
            weakref.finalize(self, shutil.rmtree, directory, True)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._tasks: set[asyncio.Task[None]] = set()
        self._epoch = 0
        self._fail_interrupted()

    def _fail_interrupted(self) -> None:
        """Runs still pending in a replayed journal died with the previous process."""
        for run_id in self.store.index("report_run").ids_between(-(2**62), 2**62):
            run = self.store.get("report_run", run_id)
            if run is not None and run["status"] == "pending":
                error = "The emulator stopped before this report run finished; create a new one."
                self.store.put("report_run", {**run, "status": "failed", "error": error})

    def create(self, params: dict[str, Any]) -> Obj:
        """Validate, store the run as ``pending`` and start building it; call on the event loop."""
        parameters = parse_parameters(params)
        days = days_between(parameters.interval_start, parameters.interval_end)
        ids = [i for day in days for i in self.store.balance_transaction_ids_on(day, "created")]
        plan = self.drift.plan(days)
        run: Obj = {
            "id": new_id("frr", 24),
            "object": "reporting.report_run",
            "created": self.clock.now(),
            "error": None,
            "livemode": False,
            "parameters": parameters.to_json(),
            "report_type": REPORT_TYPE,
            "result": None,
            "status": "pending",
            "succeeded_at": None,
        }
        self.store.put("report_run", run)
        path = self.directory / f"{run['id']}.csv"
        build = self._build(run, path, ids, plan, parameters.columns, self._epoch)
        task = asyncio.get_running_loop().create_task(build)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _build(
        self, run: Obj, path: Path, ids: list[str], plan: Plan, columns: tuple[str, ...], epoch: int
    ) -> None:
        try:
            size = await asyncio.to_thread(write_report, self.store, ids, plan, columns, path)
        except Exception as exc:
            log.exception("report run %s failed", run["id"])
            if epoch == self._epoch:
                self.store.put(
                    "report_run", {**run, "status": "failed", "error": f"The report failed: {exc}"}
                )
            return
        if epoch != self._epoch:  # the emulator was reset meanwhile
            path.unlink(missing_ok=True)
            return
        now = self.clock.now()
        file: Obj = {
            "id": new_id("file", 24),
            "object": "file",
            "created": now,
            "expires_at": now + FILE_LIFETIME_S,
            "filename": path.name,
            "purpose": "finance_report_run",
            "size": size,
            "title": f"FinanceReportRun {run['id']}",
            "type": "csv",
            "url": None,
        }
        self.store.put("file", file)
        self.store.put("report_run", {**run, "status": "succeeded", "succeeded_at": now, "result": file})

    async def idle(self) -> None:
        """Wait for the runs being built (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def reset(self) -> None:
        """Runs being built are dropped; their files and every earlier one are deleted."""
        self._epoch += 1
        for pattern in ("*.csv", "*.part"):
            for path in self.directory.glob(pattern):
                path.unlink(missing_ok=True)

    def run(self, run_id: str, base_url: str) -> Obj:
        run = self.store.get("report_run", run_id)
        if run is None:
            raise no_such("report run", run_id)
        if run["result"] is None:
            return dict(run)
        return {**run, "result": render_file(run["result"], base_url)}

    def file(self, file_id: str, base_url: str) -> Obj:
        return render_file(self._file(file_id), base_url)

    def contents(self, file_id: str) -> Path:
        path = self.directory / self._file(file_id)["filename"]
        if not path.is_file():
            raise no_such("file", file_id)
        return path

    def _file(self, file_id: str) -> Obj:
        file = self.store.get("file", file_id)
        if file is None:
            raise no_such("file", file_id)
        return file
