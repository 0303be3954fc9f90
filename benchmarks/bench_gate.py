"""Gate figures: does the noise-aware gate tell training noise from a regression, and how fast?

    python benchmarks/bench_gate.py

On a fresh clone of this repository's HEAD (toy data), trains the CNN with seeds 0, 1 and 2
of unchanged code and once for a single epoch (a real regression), then judges every ordered
pair with the gate's own paired interval (`[tool.branchflow.gate.units]` of pyproject.toml):
prints each verdict, the false-alarm rate over the seed pairs and the detections of the
regression, and the time of 10,000 resamples over 1,000 units. One line a figure.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import tempfile
import time
from pathlib import Path

from bench_pipeline import set_param
from branchflow.paired import Units, paired_interval, read_units
from branchflow.settings import GateSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"seed 0": {}, "seed 1": {"train.seed": 1}, "seed 2": {"train.seed": 2}}
REGRESSION = ("1 epoch (seed 0)", {"train.epochs": 1})


def results(clone: Path, params: dict[str, object]) -> Units:
    """Train and evaluate with `params` set (the rest as committed); the per-unit results."""
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=clone, check=True)
    for key, value in params.items():
        set_param(clone, key, value)
    subprocess.run(["dvc", "repro", "-q"], cwd=clone, check=True, stdout=subprocess.DEVNULL)
    units = load_settings(clone).gate.units
    assert units is not None, "pyproject.toml has no [tool.branchflow.gate.units]"
    return read_units((clone / units.file).read_text(), units.key, units.file)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp, "clone")
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["dvc", "pull", "-q", "data.dvc"], cwd=clone, check=True)
        gate = load_settings(clone).gate
        assert gate.units is not None
        runs = {name: results(clone, params) for name, params in [*RUNS.items(), REGRESSION]}
    seeds = list(itertools.permutations(RUNS, 2))
    verdicts = judge(gate, runs, seeds)
    alarms = sum(verdict != "no detectable change" for verdict in verdicts)
    print(
        f"false alarms over seed pairs: {alarms} of {len(verdicts)} ({alarms / len(verdicts):.0%})"
    )
    verdicts = judge(gate, runs, [(REGRESSION[0], seed) for seed in RUNS])
    print(f"regression detected as worse: {verdicts.count('worse')} of {len(verdicts)}")
    speed(gate.units.metrics)


def judge(gate: GateSettings, runs: dict[str, Units], pairs: list[tuple[str, str]]) -> list[str]:
    """Each metric's paired verdict for each (branch, reference) pair, printed with its interval."""
    assert gate.units is not None
    verdicts = []
    for (a, b), (metric, formula) in itertools.product(pairs, gate.units.metrics.items()):
        interval = paired_interval(
            runs[a],
            runs[b],
            formula,
            resamples=gate.units.resamples,
            confidence=gate.units.confidence,
        )
        assert interval is not None
        verdicts.append(interval.verdict(gate.higher_is_better(metric)))
        print(
            f"{metric} {a} vs {b}: {interval.change:+.4f} [{interval.low:+.4f}, "
            f"{interval.high:+.4f}] {verdicts[-1]}"
        )
    return verdicts


def speed(metrics: dict) -> None:
    rng = random.Random(0)
    formula = next(iter(metrics.values()))
    columns = formula.columns

    def table() -> Units:
        return Units(
            "synthetic",
            {f"u{i}": {c: float(rng.randint(0, 20)) for c in columns} for i in range(1000)},
        )

    a, b = table(), table()
    start = time.perf_counter()
    paired_interval(a, b, formula, resamples=10_000, confidence=0.95)
    print(f"10,000 resamples over 1,000 units: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
