"""``--report FILE.html``: one self-contained page (inline SVG and CSS, no network) that a person opens in a
browser: what ran, what held, latency CDFs, throughput and the database's, replicas' and wallet hosts' queues
over time, the fault timeline, retries, and the violations each swap caused.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from sim.invariants import INVARIANTS
from sim.run import RunResult
from sim.scenarios import Scenario

W, H, PAD = 560, 220, 40
#: the log axis starts no lower than a millisecond
MIN_LOG_X = 0.001
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")

Series = dict[str, list[tuple[float, float]]]


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high == low:
        return (out_low + out_high) / 2
    return out_low + (value - low) * (out_high - out_low) / (high - low)


def line_chart(title: str, series: Series, x_label: str, y_label: str, log_x: bool = False) -> str:
    """Lines over a shared x axis; ``log_x`` for values spanning decades (latencies: tens of milliseconds for
    most orders, tens of seconds for the ones that waited out retries), with a tick per decade."""
    if log_x:
        series = {
            name: [(math.log10(max(x, MIN_LOG_X)), y) for x, y in values] for name, values in series.items()
        }
    points = [p for values in series.values() for p in values]
    if not points:
        return f'<figure class="chart"><figcaption>{html.escape(title)}: no data</figcaption></figure>'
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    if log_x:
        x0, x1 = math.floor(x0), max(math.ceil(x1), math.floor(x0) + 1)
    y0, y1 = 0.0, max(p[1] for p in points) or 1.0
    parts = [_axes(x0, x1, y0, y1, x_label, y_label, x_ticks=not log_x)]
    if log_x:
        for decade in range(int(x0), int(x1) + 1):
            x = _scale(decade, x0, x1, PAD, W - 10)
            parts.append(f'<line x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{H - PAD}" stroke="#eee"/>')
            parts.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle">{10.0**decade:g}</text>')
        parts.append(
            f'<text x="{(PAD + W) / 2}" y="{H - 6}" text-anchor="middle">{html.escape(x_label)}</text>'
        )
    legend = []
    for i, (name, values) in enumerate(series.items()):
        xy = " ".join(
            f"{_scale(x, x0, x1, PAD, W - 10):.1f},{_scale(y, y0, y1, H - PAD, 10):.1f}" for x, y in values
        )
        color = COLORS[i % len(COLORS)]
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{xy}">'
            f"<title>{html.escape(name)}</title></polyline>"
        )
        legend.append(f'<span style="color: {color}">{html.escape(name)}</span>')
    return _figure(title, "".join(parts), legend=" ".join(legend))


def bar_chart(title: str, bars: Sequence[tuple[str, float]], y_label: str) -> str:
    if not bars:
        return f'<figure class="chart"><figcaption>{html.escape(title)}: no data</figcaption></figure>'
    top = max(value for _, value in bars) or 1.0
    width = (W - PAD - 10) / len(bars)
    parts = [_axes(0, len(bars), 0, top, "", y_label, x_ticks=False)]
    for i, (label, value) in enumerate(bars):
        x = PAD + i * width
        y = _scale(value, 0, top, H - PAD, 10)
        parts.append(
            f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{max(width - 4, 1):.1f}" height="{H - PAD - y:.1f}" '
            f'fill="{COLORS[i % len(COLORS)]}"><title>{html.escape(label)}: {value:g}</title></rect>'
        )
        parts.append(
            f'<text x="{x + width / 2:.1f}" y="{H - PAD + 12}" text-anchor="end" '
            f'transform="rotate(-35 {x + width / 2:.1f} {H - PAD + 12})">{html.escape(label)}</text>'
        )
    return _figure(title, "".join(parts), extra_height=60)


def timeline(title: str, rows: Sequence[tuple[str, Sequence[tuple[float, float]]]], end: float) -> str:
    """One lane per run: the windows during which a fault was on (instants drawn as thin bars)."""
    lane = 16
    height = PAD + lane * len(rows)
    parts = []
    for i, (label, windows) in enumerate(rows):
        y = 10 + i * lane
        parts.append(f'<text x="4" y="{y + 11}">{html.escape(label)}</text>')
        for start, stop in windows:
            x = _scale(start, 0, end, 170, W - 10)
            x_end = max(_scale(stop, 0, end, 170, W - 10), x + 2)
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{x_end - x:.1f}" height="{lane - 4}" fill="#dc2626"/>'
            )
    parts.append(
        f'<text x="{W - 10}" y="{height - 8}" text-anchor="end">simulated seconds, 0 … {end:g}</text>'
    )
    return _figure(title, "".join(parts), height=height)


def short(value: float) -> str:
    """An axis label that fits beside the axis: 10411.2 → 10k, 155.81 → 156, 1.0763 → 1.08."""
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _axes(
    x0: float, x1: float, y0: float, y1: float, x_label: str, y_label: str, x_ticks: bool = True
) -> str:
    parts = [
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#888"/>',
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<text x="{PAD - 4}" y="14" text-anchor="end">{short(y1)}</text>',
        f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end">{short(y0)}</text>',
        f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">'
        f"{html.escape(y_label)}</text>",
    ]
    if x_ticks:
        parts += [
            f'<text x="{PAD}" y="{H - PAD + 14}">{x0:g}</text>',
            f'<text x="{W - 10}" y="{H - PAD + 14}" text-anchor="end">{x1:g}</text>',
            f'<text x="{(PAD + W) / 2}" y="{H - 6}" text-anchor="middle">{html.escape(x_label)}</text>',
        ]
    return "".join(parts)


def _figure(title: str, body: str, height: int = H, extra_height: int = 0, legend: str = "") -> str:
    return (
        f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height + extra_height}" '
        f'viewBox="0 0 {W} {height + extra_height}">{body}</svg>'
        + (f'<div class="legend">{legend}</div>' if legend else "")
        + "</figure>"
    )


def _faults(result: RunResult) -> list[tuple[float, float]]:
    c = result.config
    windows = [
        *(window for psp in (c.psp, c.braintree) for window in (*psp.outages, *psp.unreachable)),
        *c.database.restarts,
        *((t, t + 0.05) for t in c.service.key_losses),
        *((t, t + c.service.replica_restart_s) for t in c.service.replica_crashes),
        *((t, t + c.hosts.restart_s) for t in c.hosts.crashes if t <= result.summary["faults_end_s"]),
    ]
    if c.load.spike_factor > 1 and c.load.spike_s > 0:
        windows.append((c.load.spike_at, c.load.spike_at + c.load.spike_s))
    return sorted(windows)


def render(results: Sequence[tuple[Scenario, RunResult]]) -> str:
    rows = []
    for scenario, result in results:
        s = result.summary
        broken = ", ".join(f"{v.invariant}" for v in result.violations[:1]) or "none"
        rows.append(
            "<tr>"
            f"<td>{html.escape(scenario.name)}</td><td>{'swap' if scenario.breaks else 'full'}</td>"
            f"<td>{result.config.seed}</td><td>{s['charges']:,}</td>"
            f"<td>{s['answers'].get('succeeded', 0):,}</td>"
            f"<td>{s['retries']:,}</td><td>{s['latency_s']['p99']:.3f}</td>"
            f"<td>{len(result.violations):,}</td><td>{html.escape(broken)}</td>"
            f"<td>{html.escape(scenario.about)}</td></tr>"
        )
    cdf: Series = {}
    throughput: Series = {}
    queue: Series = {}
    replica_queue: Series = {}
    host_queue: Series = {}
    for scenario, result in results:
        quantiles = result.summary["latency_cdf"]
        cdf[scenario.name] = [(value, i / (len(quantiles) - 1)) for i, value in enumerate(quantiles)]
        timeline_data = result.as_dict()["timeline"]
        throughput[scenario.name] = [
            (float(t), float(n)) for t, n in enumerate(timeline_data["finished_per_s"])
        ]
        queue[scenario.name] = [(float(t), float(n)) for t, n in enumerate(timeline_data["db_queue"])]
        replica_queue[scenario.name] = [
            (float(t), float(n)) for t, n in enumerate(timeline_data["replica_queue"])
        ]
        host_queue[scenario.name] = [(float(t), float(n)) for t, n in enumerate(timeline_data["host_queue"])]
    end = max((r.summary["faults_end_s"] for _, r in results), default=1.0)
    swaps = [(s, r) for s, r in results if s.breaks]
    violations = [
        (f"{s.name}: {name}", float(sum(v.invariant == name for v in r.violations)))
        for s, r in swaps
        for name in INVARIANTS
        if any(v.invariant == name for v in r.violations)
    ]
    charts = [
        line_chart(
            "Latency CDF: order placed → final answer",
            cdf,
            "seconds (log scale)",
            "share of orders",
            log_x=True,
        ),
        line_chart("Throughput: orders finished per simulated second", throughput, "second", "orders"),
        line_chart("Queue: transactions waiting for a database connection", queue, "second", "waiting"),
        line_chart("Queue: requests waiting for a replica's event loop", replica_queue, "second", "waiting"),
        line_chart(
            "Queue: calls waiting for a wallet host (its CPU, its batch commit, or its restart)",
            host_queue,
            "second",
            "waiting",
        ),
        timeline(
            "Fault timeline (outages, restarts, key losses, replicas and hosts down, spikes)",
            [(s.name, _faults(r)) for s, r in results],
            end,
        ),
        bar_chart("Retries per run", [(s.name, float(r.summary["retries"])) for s, r in results], "retries"),
        bar_chart("Violations each swap caused, by invariant", violations, "violations"),
    ]
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "run",
            "design",
            "seed",
            "charges",
            "succeeded",
            "retries",
            "p99 s",
            "violations",
            "first",
            "what it does",
        )
    )
    body = (
        "<h1>payray simulate</h1>\n<p>payray's own charge state machine driven against simulated components "
        "and faults; every invariant is\nchecked at the end of each run. Replay any run with <code>payray "
        "simulate RUN --seed SEED</code>.</p>\n"
        f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return page("payray simulate", body, charts)


def write(results: Sequence[tuple[Scenario, RunResult]], path: Path) -> None:
    path.write_text(render(results), encoding="utf-8")


def page(title: str, body: str, charts: Sequence[str], css: str = "") -> str:
    """A self-contained page: ``body`` (HTML), then ``charts``, and a script that puts in the title how many
    charts were laid out with a real size (what the tests' headless browser reads)."""
    return PAGE.format(
        title=html.escape(title), css=css, body=body, charts="".join(charts), count=len(charts), width=W
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #111; }}
table {{ border-collapse: collapse; margin-bottom: 24px; }}
td, th {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }}
figure.chart {{ margin: 0; border: 1px solid #eee; padding: 8px; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
.legend {{ max-width: {width}px; font-size: 11px; line-height: 1.5; }}
.legend span {{ margin-right: 8px; white-space: nowrap; }}
svg text {{ font-size: 10px; fill: #333; }}
{css}</style></head>
<body>
{body}
<div class="charts">{charts}</div>
<script>
// The page checks itself: every chart laid out with a real size (read by a headless browser in the tests).
const drawn = [...document.querySelectorAll("figure.chart svg")].filter(s => s.getBBox().width > 0).length;
document.title = "{title}: " + drawn + " of {count} charts drawn";
</script>
</body></html>
"""
