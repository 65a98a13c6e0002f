#!/usr/bin/env python3
"""Generates docs/benchmarks.md from N runs of the comparison runner.

    python3 scripts/benchmarks.py --runs 3            # 3 full runs, then write the doc
    python3 scripts/benchmarks.py --runs 3 --quick    # quick mode (64 MiB, fewer samples)
    python3 scripts/benchmarks.py --from target/benchmarks/run-*.txt   # saved outputs

Each run is `cargo run --release --example compare` (from the workspace root); its stdout is
saved under target/benchmarks/ and its `RESULT <transport> <size> <metric> <value> <unit>`
and `RATIO <name> <size> <value>` lines are parsed. The doc gives, per figure, the median and
the min-max over the runs, and for the figures that have one, the design's target and whether
the median meets it. The header names the command, the date, the machine and its load during
the runs (from the runner's `RESULT host ...` lines).

Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
DEFAULT_SAVE_DIR = ROOT / "target" / "benchmarks"
RUNNER = ["cargo", "run", "--release", "--example", "compare"]

# A figure of one run: ("RESULT", transport, size, metric) or ("RATIO", name, size, "").
Key = tuple[str, str, str, str]


@dataclass
class Run:
    """The figures of one run of the runner."""

    quick: bool
    values: dict[Key, float]
    units: dict[Key, str]

    def result(self, transport: str, size: str, metric: str) -> float | None:
        """The value of `RESULT transport size metric`, if the run printed it."""
        return self.values.get(("RESULT", transport, size, metric))

    def ratio(self, name: str) -> float | None:
        """The value of the ratio `name` (whatever its size: the runner prints one per name)."""
        found = [v for k, v in self.values.items() if k[0] == "RATIO" and k[1] == name]
        return found[0] if len(found) == 1 else None

    def ratio_size(self, name: str) -> str:
        """The size label of the ratio `name` ("?" if absent or ambiguous)."""
        sizes = [k[2] for k in self.values if k[0] == "RATIO" and k[1] == name]
        return sizes[0] if len(sizes) == 1 else "?"


def parse_run(text: str) -> Run:
    """Parses the runner's stdout; fails if it has no RESULT lines (a broken run)."""
    values: dict[Key, float] = {}
    units: dict[Key, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[0] == "RESULT":
            key: Key = ("RESULT", fields[1], fields[2], fields[3])
            values[key] = float(fields[4])
            units[key] = fields[5]
        elif len(fields) == 4 and fields[0] == "RATIO" and fields[3] != "nan":
            key = ("RATIO", fields[1], fields[2], "")
            values[key] = float(fields[3])
            units[key] = "x"
    if not any(k[0] == "RESULT" for k in values):
        raise ValueError("no RESULT lines: not the output of a finished compare run")
    return Run(quick="(QUICK MODE)" in text, values=values, units=units)


@dataclass(frozen=True)
class Target:
    """A design target (DESIGN.md section 6): a figure of each run and its bound."""

    figure: str
    value: Callable[[Run], float | None]
    at_most: bool
    bound: float
    unit: str


def quotient(a: float | None, b: float | None) -> float | None:
    """The quotient a / b, where both exist and b is positive."""
    return a / b if a is not None and b is not None and b > 0 else None


def first_over_later(model: str) -> Callable[[Run], float | None]:
    """Time of a model's first (cold) transfer over a later one: GB/s later / GB/s first."""

    def value(run: Run) -> float | None:
        size = run.ratio_size(f"{model}/memcpy")
        return quotient(run.result(model, size, "gbps"), run.result(model, size, "cold_gbps"))

    return value


def protocol_over_echo(mode: str) -> Callable[[Run], float | None]:
    """A 4 KiB task through the protocol over the raw task frame echo (round-trip medians)."""

    def value(run: Run) -> float | None:
        return quotient(
            run.result(f"protocol-task-{mode}", "4KiB", "rtt_median_us"),
            run.result(f"shmex-task-{mode}", "4KiB", "rtt_median_us"),
        )

    return value


def handoff_size_ratio(run: Run) -> float | None:
    """The loan hand-off median of the large tensor over the 1 MiB one (`RATIO shmex-loan`)."""
    found = [v for k, v in run.values.items() if k[0] == "RATIO" and k[1] == "shmex-loan"]
    return found[0] if len(found) == 1 else None


# The design's performance targets this runner measures, each a same-run figure.
TARGETS: list[Target] = [
    Target(
        "{largest} stream, copy-send + copy-out receive (ring ≤ 64 MiB) / memcpy",
        lambda r: r.ratio("shmex/memcpy"),
        False,
        0.9,
        "x",
    ),
    Target(
        "{largest} stream, copy-send + copy-out receive / Unix socket",
        lambda r: r.ratio("shmex/uds"),
        False,
        2.0,
        "x",
    ),
    Target(
        "loan-send + view-receive hand-off, 1 MiB tensor, median",
        lambda r: r.result("shmex-loan", "1MiB", "handoff_median_us"),
        True,
        0.5,
        "us",
    ),
    Target(
        "loan hand-off, {handoff} tensor (independent of size)",
        handoff_size_ratio,
        True,
        2.0,
        "x",
    ),
    Target(
        "8-byte round trip, both sides spinning, median",
        lambda r: r.result("shmex-spin", "8B", "rtt_median_us"),
        True,
        0.5,
        "us",
    ),
    Target(
        "8-byte round trip on the futex path / raw futex ping-pong",
        lambda r: r.ratio("shmex-futex/futex-raw"),
        True,
        1.1,
        "x",
    ),
    Target(
        "protocol: {largest} model task → agent → result of the same size / two memcpys",
        lambda r: r.ratio("protocol-model/memcpy-x2"),
        True,
        1.25,
        "x",
    ),
    Target(
        "protocol: {largest} model by loan, read in place both ways (receive_in_place), round trip",
        lambda r: r.result(
            "protocol-model-zero-copy",
            r.ratio_size("memcpy-x2/protocol-model-zero-copy"),
            "round_trip_ms",
        ),
        True,
        1.0,
        "ms",
    ),
    Target(
        "protocol: two memcpys of the {largest} model / its zero-copy round trip",
        lambda r: r.ratio("memcpy-x2/protocol-model-zero-copy"),
        False,
        100.0,
        "x",
    ),
    Target(
        "SIGKILLed peer reported dead, slowest of the repeats",
        lambda r: r.result("shmex", "-", "detect_max_ms"),
        True,
        100.0,
        "ms",
    ),
    Target(
        "protocol: 4 KiB task / raw 4 KiB task frame echo, both sides spinning",
        protocol_over_echo("spin"),
        True,
        3.0,
        "x",
    ),
    Target(
        "protocol: 4 KiB task, futex path / two raw futex ping-pongs",
        lambda r: r.ratio("protocol-task-futex-4KiB/futex-raw-x2"),
        True,
        1.5,
        "x",
    ),
    Target(
        "demo: first round / second round, {largest} model, size given up front",
        lambda r: r.ratio("demo-round1/round2"),
        True,
        1.5,
        "x",
    ),
    Target(
        "{largest} model: first transfer / later ones, received with recv_into",
        first_over_later("shmex-model"),
        True,
        1.5,
        "x",
    ),
    Target(
        "{largest} model: first transfer / later ones, received with recv (reassembled)",
        first_over_later("shmex-model-view"),
        True,
        1.5,
        "x",
    ),
]

# Figures other commands measure (they print them; this doc does not collect them).
OTHER_COMMANDS = [
    "`cargo bench --bench frame`: framing CPU cost in one thread (loan + receive of a tensor, "
    "send, loan and parse of a 1,000-tensor message)",
    "`cargo bench --bench ring`: criterion throughput and round-trip latency of the ring",
    "`cargo run --release -- demo`: rounds of a 1 GiB model there and back, the first one included",
    "`cargo test --release --test protocol_faults -- --nocapture`: how soon a SIGKILLed agent "
    "or exchanger is noticed through the protocol (`RESULT protocol ...` lines)",
]

# Design targets that need something other than this runner.
NOT_MEASURED_HERE = [
    "Python: a 1 GiB model task -> agent -> result >= 20x faster than FLARE 2.9's own path and "
    "<= 1.3x the Rust round trip; 8-byte task round trip <= 200 us; receiver peak RSS "
    "<= 1.2x (model + ring)",
    "C: within 1.1x the Rust figures",
    "shared memory used for a 1 GiB transfer: the ring size, not the message size",
]


def fmt(value: float) -> str:
    """A figure with three or four significant digits, no exponent."""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def spread(values: Sequence[float]) -> tuple[str, str]:
    """Median and min-max of a figure over the runs, formatted."""
    return fmt(statistics.median(values)), f"{fmt(min(values))}-{fmt(max(values))}"


def unit_label(unit: str) -> str:
    """The unit as the doc prints it."""
    return {"us": "µs", "x": "\N{MULTIPLICATION SIGN}"}.get(unit, unit)


def within(value: float, target: Target) -> bool:
    """Whether `value` meets `target`."""
    return value <= target.bound if target.at_most else value >= target.bound


def target_rows(runs: Sequence[Run]) -> list[str]:
    """The targets table: one row per target."""
    rows = [
        "| figure | median | min-max | N | target | median meets it | runs meeting it |",
        "|---|---|---|---|---|---|---|",
    ]
    sizes = {
        "largest": runs[0].ratio_size("shmex/memcpy"),
        "handoff": runs[0].ratio_size("shmex-loan").replace("/", " / "),
    }
    for target in TARGETS:
        figure = target.figure.format(**sizes)
        values = [v for v in (target.value(run) for run in runs) if v is not None]
        bound = f"{'≤' if target.at_most else '≥'} {target.bound:g} {unit_label(target.unit)}"
        if not values:
            rows.append(f"| {figure} | - | - | 0 | {bound} | not measured | - |")
            continue
        median, range_ = spread(values)
        met = "met" if within(statistics.median(values), target) else "**not met**"
        count = sum(within(v, target) for v in values)
        rows.append(
            f"| {figure} | {median} {unit_label(target.unit)} | {range_} | "
            f"{len(values)} | {bound} | {met} | {count} of {len(values)} |"
        )
    return rows


def figure_rows(runs: Sequence[Run]) -> list[str]:
    """The table of every figure (host lines excepted), in the runner's order."""
    keys: list[Key] = []
    for run in runs:
        keys.extend(k for k in run.values if k not in keys and k[1] != "host")
    rows = ["| figure | median | min-max | N |", "|---|---|---|---|"]
    for key in keys:
        values = [run.values[key] for run in runs if key in run.values]
        unit = next(run.units[key] for run in runs if key in run.units)
        kind, name, size, metric = key
        label = f"`{name}` {size} {metric}" if kind == "RESULT" else f"ratio `{name}` {size}"
        median, range_ = spread(values)
        rows.append(f"| {label} | {median} {unit_label(unit)} | {range_} | {len(values)} |")
    return rows


def machine() -> str:
    """CPUs, CPU model, memory and kernel of this machine."""
    cpus = len(os.sched_getaffinity(0))
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown memory"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB memory"
                break
    return f"{cpus} CPUs (`nproc`), {model}, {memory}, {platform.system()} {platform.release()}"


def host_range(runs: Sequence[Run], metric: str, decimals: int = 2) -> str:
    """The range of a `RESULT host - metric` figure over the runs, to `decimals` places."""
    values = [v for run in runs if (v := run.result("host", "-", metric)) is not None]
    if not values:
        return "unknown"
    low, high = f"{min(values):.{decimals}f}", f"{max(values):.{decimals}f}"
    return low if low == high else f"{low}-{high}"


def tool_output(command: list[str]) -> str:
    """The stripped stdout of `command` run in the workspace, or "unknown"."""
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def source_revision() -> str:
    """The commit measured, and whether Rust sources differed from it."""
    revision = tool_output(["git", "rev-parse", "--short", "HEAD"])
    changed = tool_output(
        ["git", "status", "--porcelain", "--", "*.rs", "**/Cargo.toml", "Cargo.lock"]
    )
    return f"{revision} with uncommitted changes to Rust sources" if changed else revision


def render(runs: Sequence[Run], regenerate: str) -> str:
    """The whole of docs/benchmarks.md."""
    quick = runs[0].quick
    mode = (
        "in quick mode (largest size 64 MiB, fewer samples and round trips)"
        if quick
        else "in full mode (sizes up to 1 GiB)"
    )
    command = " ".join(RUNNER + (["--", "--quick"] if quick else []))
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by scripts/benchmarks.py; edit the script, not this file. -->",
        "",
        f"Generated by `{regenerate}` from {len(runs)} runs of `{command}` {mode}, one after "
        "another. Every figure of a run is already a median over many samples; the tables give "
        "the median and the range of those figures over the runs. Ratios are taken within one "
        "run (both sides measured in turns on the same machine), which is what makes them "
        "comparable on a shared machine whose absolute figures drift.",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Toolchain: {tool_output(['rustc', '--version'])}; source {source_revision()}",
        f"- CPUs the runner used: {host_range(runs, 'cpus', 0)} (parent and child pinned to "
        "different CPUs when there are two)",
        f"- Load average (1 min) at the start of the runs: {host_range(runs, 'load1_start')}; "
        f"at the end: {host_range(runs, 'load1_end')}. It counts every process on the machine, "
        "the runner's own included (up to 2 while both sides spin); above the CPU count, other "
        "work competed for the CPUs and the absolute figures are lower than on an idle machine.",
        f"- Time per run: {host_range(runs, 'run_time_s', 0)} s",
        "",
        "## Targets",
        "",
        "The design's performance targets that this runner measures; a target is met when the "
        "median over the runs is within it.",
        "",
        *target_rows(runs),
        "",
        "Targets not measured by this runner:",
        "",
        *(f"- {item}" for item in NOT_MEASURED_HERE),
        "",
        "Figures measured by other commands, not collected here:",
        "",
        *(f"- {item}" for item in OTHER_COMMANDS),
        "",
        "## All figures",
        "",
        "Every `RESULT` and `RATIO` line of the runner (see `cli/examples/compare.rs` for what "
        "each measures; `gbps` is 10^9 bytes per second, `cold_gbps` the first transfer into "
        "memory not touched before).",
        "",
        *figure_rows(runs),
        "",
    ]
    return "\n".join(lines)


def run_compare(quick: bool, index: int, save_dir: Path) -> str:
    """Runs the runner once, saves its stdout and returns it; exits if the run failed."""
    command = RUNNER + (["--", "--quick"] if quick else [])
    print(f"benchmarks: run {index}: {' '.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    save_dir.mkdir(parents=True, exist_ok=True)
    saved = save_dir / f"run-{index}.txt"
    saved.write_text(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"benchmarks: run {index} failed (exit {done.returncode}); see {saved}")
    return done.stdout


def main(argv: Sequence[str]) -> int:
    """Runs (or reads) the runs and writes the doc."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of the runner (default 3)")
    parser.add_argument("--quick", action="store_true", help="run the runner in quick mode")
    parser.add_argument(
        "--from", dest="saved", type=Path, nargs="+", help="saved runner outputs to read instead"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the doc to write")
    parser.add_argument(
        "--save-dir", type=Path, default=DEFAULT_SAVE_DIR, help="where run outputs are saved"
    )
    args = parser.parse_args(argv)
    if args.saved:
        texts = [path.read_text() for path in args.saved]
    else:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        texts = [run_compare(args.quick, i, args.save_dir) for i in range(1, args.runs + 1)]
    runs = [parse_run(text) for text in texts]
    if len({run.quick for run in runs}) != 1:
        raise SystemExit("benchmarks: quick and full runs mixed; give runs of one mode")
    regenerate = f"python3 scripts/benchmarks.py --runs {len(runs)}" + (
        " --quick" if runs[0].quick else ""
    )
    args.output.write_text(render(runs, regenerate))
    print(f"benchmarks: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
