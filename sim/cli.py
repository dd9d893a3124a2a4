"""``payray simulate``: run a scenario, a swap, or all of them, and say what held and what broke."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sim import calibration, capacity_report, report, whatif
from sim.run import RunResult, Simulation
from sim.scenarios import ALL, SCENARIOS, SWAPS, Scenario
from sim.swarm import swarm_config

CHOICES = ("all", "swarm", "calibrate", "whatif", *ALL)
#: Where ``bench/calibrate.py`` writes the levels it measured, and so where ``calibrate`` reads them.
MEASURED = Path("bench/out/calibrate.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=CHOICES,
        metavar="SCENARIO",
        help=f"one of: {', '.join(CHOICES)} (default all: every scenario and every swap; swarm: a world of "
        "faults drawn from each seed; calibrate: the capacity model fitted to the real stack's first "
        "measured level, its predictions of the others beside their measurements; whatif: the calibrated "
        "model asked about more load, more replicas and cores, a slower PSP)",
    )
    parser.add_argument(
        "--measured", type=Path, metavar="FILE.json",
        help=f"calibrate, whatif: the levels bench/calibrate.py measured (default {MEASURED}; measured if "
        "missing)",
    )  # fmt: skip
    knobs = whatif.Question()
    parser.add_argument(
        "--load",
        type=float,
        default=knobs.load,
        help=f"whatif: times the baseline's charges in flight (default {knobs.load:g})",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=knobs.replicas,
        help=f"whatif: API replicas (default {knobs.replicas})",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=knobs.cores,
        help=f"whatif: the bigger machine's cores (default {knobs.cores})",
    )
    parser.add_argument("--psp-ms", type=float, default=knobs.psp_ms,
                        help=f"whatif: ms added to each PSP call (default {knobs.psp_ms:g})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="the run's seed, or swarm's first (default 1)")
    parser.add_argument("--seeds", type=int, default=20, help="swarm: how many seeds (default 20)")
    parser.add_argument("--charges", type=int, help="charges per run (default: the scenario's, 2,000)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--report", type=Path, metavar="FILE.html", help="write a self-contained HTML page with the plots"
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.charges is not None and not 1 <= args.charges <= 10_000_000:
        return f"--charges must be 1 to 10,000,000, got {args.charges}"
    if args.seed < 0:
        return f"--seed must be >= 0, got {args.seed}"
    if args.report is not None and args.scenario in ("swarm", "calibrate"):
        return f"--report draws scenarios, swaps and what-ifs; not {args.scenario}"
    if not 1 <= args.seeds <= 1_000_000:
        return f"--seeds must be 1 to 1,000,000, got {args.seeds}"
    if args.measured is not None and args.scenario not in ("calibrate", "whatif"):
        return "--measured is for calibrate and whatif"
    if not 0 < args.load <= 100:
        return f"--load must be above 0 and at most 100, got {args.load:g}"
    if not 1 <= args.replicas <= 64:
        return f"--replicas must be 1 to 64, got {args.replicas}"
    if not 1 <= args.cores <= 256:
        return f"--cores must be 1 to 256, got {args.cores}"
    if not 0 <= args.psp_ms <= 60_000:
        return f"--psp-ms must be 0 to 60,000, got {args.psp_ms:g}"
    if args.measured is not None and not args.measured.is_file():
        return f"--measured: no such file: {args.measured}"
    return None


def run_one(scenario: Scenario, seed: int, charges: int | None, console: Console) -> RunResult:
    config = scenario.config(seed, charges)
    if config.load.charges < 100_000:
        return Simulation(config, scenario.name).run()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{scenario.name}, seed {seed}", total=config.load.charges)
        simulation = Simulation(config, scenario.name, lambda i: progress.update(task, completed=i))
        return simulation.run()


def as_expected(scenario: Scenario, result: RunResult) -> bool:
    """A scenario keeps every invariant; a swap breaks the one it is there to show."""
    if scenario.breaks is None:
        return result.ok
    return any(v.invariant == scenario.breaks for v in result.violations)


def main(args: argparse.Namespace) -> int:
    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.scenario == "swarm":
        return swarm(args, console)
    if args.scenario in ("calibrate", "whatif"):
        return calibrate(args, console)
    names = list(ALL) if args.scenario == "all" else [args.scenario]
    results = [(ALL[name], run_one(ALL[name], args.seed, args.charges, console)) for name in names]
    console.print(_table(results))
    for scenario, result in results:
        if len(result.config.routing.priorities) > 1:
            console.print(f"{scenario.name}: {routing_line(result)}")
    for scenario, result in results:
        if not as_expected(scenario, result) or (len(results) == 1 and not result.ok):
            _explain(console, scenario, result)
    if args.json is not None:
        body = results[0][1].to_json() if len(results) == 1 else _many_json(results)
        args.json.write_text(body + "\n")
    if args.report is not None:
        report.write(results, args.report)
        console.print(f"report: {args.report}")
    if len(results) == 1:
        return 0 if results[0][1].ok else 1
    return 0 if all(as_expected(s, r) for s, r in results) else 1


def swarm(args: argparse.Namespace, console: Console) -> int:
    """Seeds ``--seed`` … ``--seed + --seeds - 1``, each its own world; exit 1 if any breaks an invariant."""
    charges = args.charges or 500
    failed: list[RunResult] = []
    rows: list[dict[str, int | bool]] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("swarm", total=args.seeds)
        for seed in range(args.seed, args.seed + args.seeds):
            result = Simulation(swarm_config(seed, charges), "swarm").run()
            summary = result.summary
            rows.append(
                {"seed": seed, "ok": result.ok, "violations": len(result.violations),
                 "payments": summary["payments"], "retries": summary["retries"]}
            )  # fmt: skip
            if not result.ok:
                failed.append(result)
            progress.advance(task)
    table = Table(title=f"payray simulate swarm: seeds {args.seed} … {args.seed + args.seeds - 1}")
    for column in ("seeds", "charges each", "payments", "retries", "violated seeds"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{args.seeds:,}",
        f"{charges:,}",
        f"{sum(int(r['payments']) for r in rows):,}",
        f"{sum(int(r['retries']) for r in rows):,}",
        ", ".join(str(r.config.seed) for r in failed[:20]) or "none",
    )
    console.print(table)
    for result in failed[:3]:
        _explain(console, Scenario("swarm", "", {}), result)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, sort_keys=True) + "\n")
    return 1 if failed else 0


def calibrate(args: argparse.Namespace, console: Console) -> int:
    """Fit the capacity model to the first measured level, predict the others, and set them side by side;
    exit 1 when a prediction misses its target (``calibration.TARGETS``). ``whatif`` then runs the calibrated
    model's what-ifs beside its baseline."""
    levels = _measured_levels(args, console)
    if isinstance(levels, int):
        return levels
    fitted = calibration.fit(levels[0], seed=args.seed)
    comparisons = calibration.compare(fitted, levels[1:], seed=args.seed)
    console.print(_calibration_table(fitted, comparisons))
    top = max(comparisons, key=lambda c: c.clients)
    heaviest = calibration.measured_split(top.measured)
    measured_busy = sum(top.measured.cpu_ms.values()) * top.measured.per_s / 1000 / top.measured.cores
    console.print(
        f"saturates first, model at {top.clients} in flight: {top.predicted.saturated_first} (cores "
        f"{top.predicted.cores_busy:.0%} busy; busiest process {_busiest(top.predicted)}); measured: cores "
        f"{measured_busy:.0%} busy, the most CPU per charge in the {heaviest} "
        f"({top.measured.cpu_ms[heaviest]:.2f} of {sum(top.measured.cpu_ms.values()):.2f} ms)"
    )
    body: dict[str, object] = {
        "fitted": {"api_path_share": fitted.shares.api, "level": levels[0].to_json(),
                   "unexplained_wait_ms": round(1000 * fitted.shares.unexplained_wait_s, 2),
                   "model": fitted.outcome.as_dict()},
        "levels": [c.as_dict() for c in comparisons],
    }  # fmt: skip
    if args.scenario == "whatif":
        question = whatif.Question(args.load, args.replicas, args.cores, args.psp_ms)
        answers = whatif.answer(whatif.standard(fitted.machine, top.clients, question), seed=args.seed)
        console.print(_whatif_table(answers))
        body["whatif"] = [a.as_dict() for a in answers]
        if args.report is not None:
            capacity_report.write(fitted, comparisons, answers, args.report)
            console.print(f"report: {args.report}")
    if args.json is not None:
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    return 0 if calibration.within_targets(comparisons) else 1


def _measured_levels(args: argparse.Namespace, console: Console) -> list[calibration.Measured] | int:
    """The measured levels (measuring the real stack first when there is no file), or an exit code."""
    path = args.measured or MEASURED
    if args.measured is None and not path.is_file():
        console.print(f"measuring the real stack first: python -m bench.calibrate --json {path}")
        subprocess.run([sys.executable, "-m", "bench.calibrate", "--json", str(path)], check=True)
    try:
        levels = [calibration.Measured.from_json(level) for level in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError) as exc:
        console.print(f"[bold red]{path}[/]: not a list of measured levels ({exc})")
        return 2
    if len(levels) < 2:
        console.print(f"[bold red]{path}[/]: give the calibration level and at least one to predict")
        return 2
    return levels


def _whatif_table(answers: list[whatif.Answer]) -> Table:
    table = Table(title="payray simulate whatif: the calibrated model, one change at a time")
    for column in ("run", "in flight", "charges/s", "vs baseline", "p50 ms", "p99 ms", "cores busy",
                   "runs out first"):  # fmt: skip
        table.add_column(column, justify="left" if column == "run" else "right")
    base = answers[0].outcome
    for a in answers:
        o = a.outcome
        table.add_row(
            a.whatif.name, str(a.whatif.clients), f"{o.per_s:.0f}", f"{o.per_s / base.per_s:.2f}x",
            f"{o.p50_ms:.1f}", f"{o.p99_ms:.1f}", f"{o.cores_busy:.0%}", o.saturated_first,
        )  # fmt: skip
    return table


def _busiest(outcome: calibration.Outcome) -> str:
    name = max(outcome.utilisation, key=lambda p: outcome.utilisation[p])
    return f"{name} {outcome.utilisation[name]:.0%}"


def _calibration_table(fitted: calibration.Fit, comparisons: list[calibration.Comparison]) -> Table:
    m = fitted.measured
    table = Table(
        title=f"payray simulate calibrate: fitted at {m.clients} in flight over {m.merchants} merchants "
        f"(model {fitted.outcome.per_s:.0f}/s, p50 {fitted.outcome.p50_ms:.1f} ms; measured {m.per_s:.0f}/s, "
        f"p50 {m.p50_ms:.1f} ms; {fitted.fitted_values})"
    )
    columns = ["in flight", "merchants"]
    for figure in ("charges/s", "p50 ms", "p99 ms"):
        columns += [f"{figure} predicted", "measured", "error"]
    for column in columns:
        table.add_column(column, justify="right")
    for c in comparisons:
        row = [str(c.clients), str(c.merchants)]
        for key, digits in (("per_s", 0), ("p50_ms", 1), ("p99_ms", 1)):
            error = c.errors.get(key, 0.0)
            hit = abs(error) <= calibration.TARGETS[key]
            row += [
                f"{getattr(c.predicted, key):.{digits}f}", f"{getattr(c.measured, key):.{digits}f}",
                f"[{'green' if hit else 'bold red'}]{error:+.0%}[/]",
            ]  # fmt: skip
        table.add_row(*row)
    return table


def _many_json(results: list[tuple[Scenario, RunResult]]) -> str:
    return "[" + ",".join(result.to_json() for _, result in results) + "]"


def _table(results: list[tuple[Scenario, RunResult]]) -> Table:
    table = Table(title=f"payray simulate, seed {results[0][1].config.seed}")
    for column in ("scenario", "design", "charges", "succeeded", "authorized", "declined", "failed",
                   "retries", "p99 s", "violations", "as expected"):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("scenario", "design", "violations") else "right"
        )
    for scenario, result in results:
        summary = result.summary
        answers = summary["answers"]
        broken = ", ".join(
            f"{name} {sum(v.invariant == name for v in result.violations)}"
            for name in dict.fromkeys(v.invariant for v in result.violations)
        )
        table.add_row(
            scenario.name,
            "full" if scenario.name in SCENARIOS else "swap",
            f"{summary['charges']:,}",
            f"{answers.get('succeeded', 0):,}",
            f"{answers.get('authorized', 0):,}",
            f"{answers.get('declined', 0):,}",
            f"{answers.get('failed', 0) + answers.get('gave_up', 0):,}",
            f"{summary['retries']:,}",
            f"{summary['latency_s']['p99']:.3f}",
            broken or "none",
            "[green]yes[/]" if as_expected(scenario, result) else "[bold red]NO[/]",
        )
    return table


def routing_line(result: RunResult) -> str:
    """A run's routing in one line: where payments were captured, what failed over and how fast."""
    routing = result.summary["routing"]
    captures = ", ".join(f"{psp} {n:,}" for psp, n in routing["captures"].items())
    cascades = ", ".join(f"{n:,} after {end}" for end, n in routing["cascades"].items()) or "none"
    opened = ", ".join(f"{psp} {n}" for psp, n in routing["breaker_opened"].items() if n) or "none"
    late = sum(routing["late_captures"].values())
    reversed_ = routing["left_attempts"].get("reversed", 0)
    line = (
        f"captures {captures}; cascades {cascades}; breakers opened {opened}; "
        f"{routing['success_rate']:.2%} of charges not declined succeeded; late captures {late:,}, "
        f"{reversed_:,} given back"
    )
    failover = routing["failover"]
    if failover["to_second_psp_s"] is not None:
        line += f"; first failover {failover['to_second_psp_s']:.3f} s into the outage"
    if failover["to_breaker_open_s"] is not None:
        line += f", breaker open at {failover['to_breaker_open_s']:.3f} s"
    if failover["open_to_direct_s"] is not None:
        line += f", first payment straight to the next PSP {failover['open_to_direct_s']:.3f} s after"
    return line


def _explain(console: Console, scenario: Scenario, result: RunResult) -> None:
    """The seed and the first violating charge's story: enough to replay it with ``--seed``."""
    if not result.violations:
        console.print(f"[bold red]{scenario.name}[/]: the swap broke nothing ({scenario.breaks} held)")
        return
    first = result.violations[0]
    console.print(
        f"[bold red]{scenario.name}[/], seed {result.config.seed}: {len(result.violations)} violations; "
        f"first: {first.invariant}, charge {first.charge}: {first.detail}"
    )
    for at, who, source, event, target in result.first_history:
        console.print(f"  t={at:9.4f}s  {who:8s} {source} --{event}--> {target}")
    replay = f"{scenario.name} --seed {result.config.seed}"
    if scenario.name == "swarm":
        replay += f" --seeds 1 --charges {result.config.load.charges}"
    console.print(f"  replay: payray simulate {replay}")


__all__ = ["SWAPS", "add_arguments", "check_arguments", "main"]
