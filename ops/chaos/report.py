"""A chaos run shown three ways: a table on the terminal, JSON (``--json``), and one HTML page (``--html``)
with the load, the latency and payray's own figures over time and every fault marked where it struck.

The page is a single file with inline SVG: no script, nothing fetched, so it opens anywhere.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from ops.chaos.measure import FaultResult
from ops.chaos.run import ChaosRun

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def as_json(run: ChaosRun) -> dict[str, Any]:
    return {
        "passed": run.passed,
        "options": asdict(run.options),
        "faults": [{**asdict(r), "recovered": r.recovered} for r in run.results],
        "violations": run.violations,
        "invariants": run.invariants,
        "reconciliation": run.reconciliation,
        "load": run.load,
        "timeline": run.timeline,
        "probes": run.probes,
        "notes": run.notes,
        "home": run.home,
        "samples": run.samples,
    }


def print_table(run: ChaosRun, console: Console) -> None:
    over = ", TLS everywhere" if run.options.tls else ""
    table = Table(title=f"payray chaos: {run.options.nodes} nodes, seed {run.options.seed}{over}")
    for column in (
        "fault",
        "at s",
        "lasted s",
        "recovered in s",
        "requests",
        "failed",
        "retries",
        "what it hit",
    ):
        table.add_column(column, overflow="fold")
    for r in run.results:
        table.add_row(
            r.fault,
            f"{r.injected_s:.1f}",
            f"{r.lasted_s:.1f}",
            _recovery(r),
            str(r.requests),
            _failed(r),
            str(r.retries),
            r.error or r.detail,
        )
    console.print(table)
    load = run.load
    console.print(
        f"{load.get('requests', 0)} load requests; {load.get('captures_seen_succeeded', 0)} charges and "
        f"{load.get('refunds_seen_succeeded', 0)} refunds seen succeeded, each checked in the ledger; "
        f"reconciliation: {run.reconciliation.get('matched')} matched, "
        f"{sum((run.reconciliation.get('discrepancies') or {}).values())} discrepancies"
    )
    console.print(f"every request and Locust's statistics: {run.home}")
    for note in run.notes:
        console.print(f"[yellow]tried again[/] {note}")
    if run.passed:
        console.print("[bold green]every fault recovered; no invariant violated[/]")
    for violation in run.violations:
        console.print(f"[bold red]violation[/] {violation}")
    for r in run.results:
        if not r.recovered:
            console.print(
                f"[bold red]not recovered[/] {r.fault}: {r.error or 'no normal answers by its end'}"
            )


def _recovery(r: FaultResult) -> str:
    return "—" if r.recovered_s is None else f"{r.recovered_s:.2f}"


def _failed(r: FaultResult) -> str:
    return ", ".join(f"{n} {status}" for status, n in r.failed.items()) or "0"


def html_page(run: ChaosRun) -> str:
    faults = run.results
    t = [row["t"] for row in run.timeline]
    rates = [
        ("answered ok /s", list(zip(t, (row["ok_per_s"] for row in run.timeline), strict=True))),
        ("failed /s", list(zip(t, (row["failed_per_s"] for row in run.timeline), strict=True))),
    ]
    latency = [
        ("p50 ms", list(zip(t, (row["p50_ms"] for row in run.timeline), strict=True))),
        ("p99 ms", list(zip(t, (row["p99_ms"] for row in run.timeline), strict=True))),
    ]
    samples = run.samples
    per_s = [
        (b["t"], (b["ledger_transactions"] - a["ledger_transactions"]) / max(b["t"] - a["t"], 1e-9))
        for a, b in itertools.pairwise(samples)
    ]
    payray = [
        ("ledger transactions /s", per_s),
        ("payments not finished", [(s["t"], s["unfinished_payments"]) for s in samples]),
    ]
    rows = "".join(
        f"<tr><td>{html.escape(r.fault)}</td><td>{r.injected_s:.1f}</td><td>{r.lasted_s:.1f}</td>"
        f"<td class={'ok' if r.recovered else 'bad'}>{_recovery(r)}</td><td>{r.requests}</td>"
        f"<td>{html.escape(_failed(r))}</td><td>{r.retries}</td>"
        f"<td>{html.escape(r.error or r.detail)}</td></tr>"
        for r in faults
    )
    checks = "".join(
        f"<tr><td>{html.escape(name)}</td><td class={'ok' if s.get('ok') else 'bad'}>"
        f"{'ok' if s.get('ok') else 'VIOLATED'}</td></tr>"
        for name, s in run.invariants.items()
        if isinstance(s, dict)
    )
    violations = "".join(f"<li>{html.escape(v)}</li>" for v in run.violations) or "<li>none</li>"
    verdict = "passed" if run.passed else "FAILED"
    o = run.options
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>payray chaos — {verdict}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1000px; }}
table {{ border-collapse: collapse; margin: 12px 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
th {{ background: #f3f3f3; }} .ok {{ color: #1a7f37; }} .bad {{ color: #c00; font-weight: bold; }}
svg text {{ font: 11px system-ui, sans-serif; }}
</style></head><body>
<h1>payray chaos: <span class={"ok" if run.passed else "bad"}>{verdict}</span></h1>
<p>{o.nodes} Ray nodes, {o.users} Locust users over {o.merchants} merchants, seed {o.seed},
faults: {html.escape(", ".join(o.faults))}. Dashed lines: a fault injected; shading: until it recovered.</p>
{_chart("Load (Locust's requests and the bursts, by answer time)", rates, faults)}
{_chart("Latency", latency, faults)}
{_chart("payray", payray, faults)}
<h2>Faults</h2>
<table><tr><th>fault</th><th>at s</th><th>lasted s</th><th>recovered s after</th><th>requests</th>
<th>failed</th><th>retries</th><th>what it hit</th></tr>{rows}</table>
<h2>Invariants</h2><table>{checks}</table>
<h2>Violations</h2><ul>{violations}</ul>
</body></html>
"""


def _chart(title: str, series: list[tuple[str, list[tuple[float, float]]]], faults: list[FaultResult]) -> str:
    """One SVG line chart over the run's seconds, with the faults marked."""
    width, height, left, top, bottom = 960, 220, 56, 24, 28
    points = [p for _, line in series for p in line]
    x_max = max(
        [p[0] for p in points] + [r.injected_s + r.lasted_s + (r.recovered_s or 0) for r in faults] + [1.0]
    )
    y_max = max([p[1] for p in points] + [1.0]) * 1.1

    def x(v: float) -> float:
        return left + (width - left - 10) * v / x_max

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / y_max)

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">']
    parts.append(f'<text x="{left}" y="14" font-weight="bold">{html.escape(title)}</text>')
    for r in faults:
        end = r.injected_s + r.lasted_s + (r.recovered_s or 0.0)
        parts.append(
            f'<rect x="{x(r.injected_s):.1f}" y="{top}" width="{max(1.0, x(end) - x(r.injected_s)):.1f}" '
            f'height="{height - top - bottom}" fill="#f5a623" opacity="0.18"/>'
            f'<line x1="{x(r.injected_s):.1f}" x2="{x(r.injected_s):.1f}" y1="{top}" y2="{height - bottom}" '
            f'stroke="#e07000" stroke-dasharray="4 3"/>'
            f'<text x="{x(r.injected_s) + 2:.1f}" y="{top + 10}" fill="#a04000" '
            f'transform="rotate(90 {x(r.injected_s) + 2:.1f} {top + 10})">{html.escape(r.fault)}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{width - 10}" y1="{height - bottom}" y2="{height - bottom}" stroke="#888"/>'
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y_max / 1.1:.0f}</text>'
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>'
        f'<text x="{width - 10}" y="{height - 8}" text-anchor="end">{x_max:.0f} s</text>'
    )
    for (name, line), colour, i in zip(series, COLOURS, itertools.count(), strict=False):
        if line:
            path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in line)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        legend_x = width - 10 - 190 * (len(series) - i)
        parts.append(f'<text x="{legend_x}" y="14" fill="{colour}">— {html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
