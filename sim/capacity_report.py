"""``payray simulate whatif --report FILE.html``: the calibration (predicted beside measured) and each what-if
beside the calibrated baseline, as one self-contained page (inline SVG and CSS, nothing from the network)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from sim.calibration import TARGETS, Comparison, Fit
from sim.report import Series, bar_chart, line_chart, page
from sim.whatif import Answer


def _calibration_rows(fitted: Fit, comparisons: Sequence[Comparison]) -> str:
    m, model = fitted.measured, fitted.outcome
    rows = [
        f"<tr><td>{m.clients} x {m.merchants} (fitted)</td>"
        f"<td>{model.per_s:.0f}</td><td>{m.per_s:.0f}</td><td></td>"
        f"<td>{model.p50_ms:.1f}</td><td>{m.p50_ms:.1f}</td><td></td>"
        f"<td>{model.p99_ms:.1f}</td><td>{m.p99_ms:.1f}</td><td></td></tr>"
    ]
    for c in comparisons:
        cells = []
        for key, digits in (("per_s", 0), ("p50_ms", 1), ("p99_ms", 1)):
            error = c.errors.get(key, 0.0)
            miss = "" if abs(error) <= TARGETS[key] else ' class="miss"'
            predicted, measured = getattr(c.predicted, key), getattr(c.measured, key)
            cells.append(
                f"<td>{predicted:.{digits}f}</td><td>{measured:.{digits}f}</td><td{miss}>{error:+.0%}</td>"
            )
        rows.append(f"<tr><td>{c.clients} x {c.merchants}</td>{''.join(cells)}</tr>")
    return "".join(rows)


def _whatif_rows(answers: Sequence[Answer]) -> str:
    base = answers[0].outcome
    rows = []
    for a in answers:
        o = a.outcome
        rows.append(
            f"<tr><td>{html.escape(a.whatif.name)}</td><td>{a.whatif.clients}</td>"
            f"<td>{o.per_s:.0f}</td><td>{o.per_s / base.per_s:.2f}x</td>"
            f"<td>{o.p50_ms:.1f}</td><td>{o.p99_ms:.1f}</td><td>{o.cores_busy:.0%}</td>"
            f"<td>{html.escape(o.saturated_first)}</td></tr>"
        )
    return "".join(rows)


def render(fitted: Fit, comparisons: Sequence[Comparison], answers: Sequence[Answer]) -> str:

    def bars(figure: str) -> list[tuple[str, float]]:
        return [(a.whatif.name, float(getattr(a.outcome, figure))) for a in answers]

    cdf: Series = {
        a.whatif.name: [(q / 1000, i / 20) for i, q in enumerate(a.outcome.quantiles_ms)] for a in answers
    }
    charts = [
        bar_chart("Charges a second", bars("per_s"), "charges/s"),
        bar_chart("p50 latency", bars("p50_ms"), "ms"),
        bar_chart("p99 latency", bars("p99_ms"), "ms"),
        line_chart("Latency CDF", cdf, "seconds (log scale)", "share of charges", log_x=True),
        bar_chart(
            "Calibration: predicted / measured charges a second",
            [(f"{c.clients} x {c.merchants}", c.predicted.per_s / c.measured.per_s) for c in comparisons],
            "ratio",
        ),
    ]
    levels = [(fitted.measured, fitted.outcome, " (fitted)")]
    levels += [(c.measured, c.predicted, "") for c in comparisons]
    for measured, predicted, note in levels:
        if measured.quantiles_ms:
            curves = {"model": predicted.quantiles_ms, "measured": list(measured.quantiles_ms)}
            title = f"Latency at {measured.clients} in flight over {measured.merchants} merchants{note}"
            series = {name: [(q / 1000, i / 20) for i, q in enumerate(qs)] for name, qs in curves.items()}
            charts.append(line_chart(title, series, "seconds (log scale)", "share of charges", log_x=True))
    m = fitted.measured
    body = BODY.format(
        level=f"{m.clients} in flight over {m.merchants} merchants",
        fitted_values=html.escape(fitted.fitted_values),
        calibration=_calibration_rows(fitted, comparisons),
        whatifs=_whatif_rows(answers),
    )
    return page("payray simulate whatif", body, charts, css=CSS)


def write(fitted: Fit, comparisons: Sequence[Comparison], answers: Sequence[Answer], path: Path) -> None:
    path.write_text(render(fitted, comparisons, answers), encoding="utf-8")


#: the tables' figures right-aligned, a missed target in red
CSS = """body { max-width: 1200px; }
td, th { text-align: right; }
td:first-child, th:first-child { text-align: left; }
td.miss { color: #dc2626; font-weight: 600; }
"""

BODY = """<h1>payray simulate whatif</h1>
<p>The capacity model of the charge path (<code>sim/capacity.py</code>), fitted to the real stack measured at
{level} ({fitted_values}), checked against the other measured levels, then asked about machines
payray does not have. Each what-if changes one thing of the calibrated baseline.</p>
<h2>Calibration</h2>
<table><thead><tr><th>in flight x merchants</th><th>charges/s model</th><th>measured</th><th>error</th>
<th>p50 ms model</th><th>measured</th><th>error</th><th>p99 ms model</th><th>measured</th><th>error</th></tr>
</thead><tbody>{calibration}</tbody></table>
<h2>What if</h2>
<table><thead><tr><th>run</th><th>in flight</th><th>charges/s</th><th>vs baseline</th><th>p50 ms</th>
<th>p99 ms</th><th>cores busy</th><th>runs out first</th></tr></thead><tbody>{whatifs}</tbody></table>"""
