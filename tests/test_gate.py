"""`branchflow gate`: its settings, its rules, and the command on real git + DVC repositories."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from branchflow.cli import main
from branchflow.errors import BranchflowError
from branchflow.paired import Units, parse_formula
from branchflow.report.compare import (
    Base,
    Champion,
    Comparison,
    Metric,
    UnitTables,
    default_base,
)
from branchflow.report.gate import evaluate
from branchflow.settings import GateSettings, UnitSettings, load_settings
from tests.conftest import hide_ci_variables, init_repo, sh
from tests.metrics_project import branch_with

GATE = GateSettings(
    lower_is_better=("loss",),
    min={"f1": 0.95},
    max={"loss": 0.3},
    max_drop_vs_base={"f1": 0.01, "loss": 0.05},
    max_drop_vs_champion={"f1": 0.02},
)
MAIN = Base("main", "0" * 40)


@pytest.fixture
def no_ci_env(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")


def comparison(
    base: dict[str, float] | None, champion: dict[str, float] | None = None, **current: float
) -> Comparison:
    metrics = tuple(
        Metric(name, value, (base or {}).get(name), value - base[name] if base else None)
        for name, value in current.items()
    )
    return Comparison(
        base=MAIN,
        metrics=metrics,
        base_found=base is not None,
        champion=Champion("prod", "3", champion) if champion is not None else None,
        champion_missing=None if champion is not None else "no MLflow registry configured",
    )


def failures(gate: GateSettings, comp: Comparison) -> list[str]:
    return [check.text for check in evaluate(gate, comp).checks if not check.passed]


def test_drop_of_exactly_the_tolerance_passes_despite_float_rounding() -> None:
    comp = comparison({"f1": 0.9888, "loss": 0.2}, {"f1": 0.9988}, f1=0.9788, loss=0.25)
    verdict = evaluate(GATE, comp)
    assert verdict.passed, verdict.lines()
    assert len(verdict.checks) == 5


def test_each_broken_rule_is_its_own_failure_and_direction_counts() -> None:
    comp = comparison({"f1": 0.99, "loss": 0.1}, {"f1": 0.99}, f1=0.94, loss=0.31)
    assert failures(GATE, comp) == [
        "`f1` is 0.9400, below the floor 0.9500",
        "`loss` is 0.3100, above the ceiling 0.3000",
        "`f1` got worse by 0.0500 vs main (0.9900 → 0.9400); at most 0.0100 allowed",
        "`loss` got worse by 0.2100 vs main (0.1000 → 0.3100); at most 0.0500 allowed",
        "`f1` got worse by 0.0500 vs champion v3 (0.9900 → 0.9400); at most 0.0200 allowed",
    ]
    # A lower loss is an improvement, however large.
    assert failures(GATE, comparison({"f1": 0.96, "loss": 0.3}, None, f1=0.96, loss=0.0)) == []


def test_missing_base_champion_or_metric_is_said_not_crashed() -> None:
    verdict = evaluate(GATE, comparison(None, None, f1=0.96, loss=0.1))
    assert verdict.passed
    assert verdict.notes == (
        "no base metrics in main: first run, comparison rules skipped",
        "no champion: no MLflow registry configured; champion rules skipped",
    )
    renamed = evaluate(GATE, comparison(None, None, f1_score=0.96, loss=0.1))
    assert not renamed.passed
    assert "`f1` is not in this branch's metrics" in renamed.lines()[1]


def test_metrics_that_are_not_finite_numbers_fail_their_rules() -> None:
    spoilt = {"f1": "nan (float) in reports/metrics.json", "loss": "'low' (str) in m.json"}
    comp = replace(comparison(None, None), invalid=spoilt)
    verdict = evaluate(GATE, comp)
    assert not verdict.passed
    assert failures(GATE, comp) == [
        "`f1` is nan (float) in reports/metrics.json, not a finite number; fix what writes it",
        "`loss` is 'low' (str) in m.json, not a finite number; fix what writes it",
    ]


def test_a_non_finite_reference_skips_its_rule_with_a_note() -> None:
    nan = float("nan")
    verdict = evaluate(GATE, comparison({"f1": nan, "loss": 0.1}, {"f1": nan}, f1=0.96, loss=0.1))
    assert verdict.passed
    assert "`f1` is nan in main's metrics: its rule skipped" in verdict.notes
    assert "`f1` is nan in champion v3's metrics: its rule skipped" in verdict.notes


def test_gate_names_the_file_key_and_value_of_a_spoilt_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_ci_env: None
) -> None:
    """A real DVC project whose metrics file holds what no rule can judge: exit 1, each named."""
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    metrics = '{"m": {"f1": NaN, "loss": Infinity, "auc": "high", "pr": [0.5], "ok": true}}'
    (repo / "reports" / "metrics.json").write_text(metrics)
    (repo / "dvc.yaml").write_text("metrics:\n  - reports/metrics.json\n")
    rules = "\n".join(f'"m.{name}" = 0.5' for name in ("f1", "loss", "auc", "pr", "ok"))
    (repo / "pyproject.toml").write_text(f"[tool.branchflow.gate.min]\n{rules}\n")
    init_repo(repo)
    sh("dvc", "init", "-q", cwd=repo)
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["gate"])
    assert result.exit_code == 1, result.output
    found = ["nan (float)", "inf (float)", "'high' (str)", "[0.5] (list)", "True (bool)"]
    assert result.output.splitlines() == [
        "gate failed: 5 of 5 rules failed",
        *(
            f"FAIL: `m.{name}` is {value} in reports/metrics.json, not a finite number; "
            "fix what writes it"
            for name, value in zip(("f1", "loss", "auc", "pr", "ok"), found, strict=True)
        ),
    ]


def test_base_defaults_to_the_pull_requests_base_branch() -> None:
    assert default_base({"GITHUB_BASE_REF": "main"}) == "origin/main"
    assert default_base({}) is None


def test_gate_settings_read_well_and_reject_typos(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[tool.branchflow.gate.min]\n"
        "cnn.overall.f1 = 0.95  # unquoted dotted keys are nested tables in TOML\n"
        '"cnn.overall.recall" = 0.9\n'
    )
    gate = load_settings(tmp_path).gate
    assert gate.min == {"cnn.overall.f1": 0.95, "cnn.overall.recall": 0.9}
    assert load_settings(tmp_path / "nowhere").gate == GateSettings()
    for table, message in [
        ('mni = {"f1" = 0.9}', "unknown key 'mni' in [tool.branchflow.gate]; did you mean 'min'?"),
        (
            'max_drop_vs_base = {"f1" = -0.01}',
            "max_drop_vs_base: 'f1' must be a finite number >= 0",
        ),
        ('min = {"f1" = "high"}', "min: 'f1' must be a finite number, got 'high'"),
        ('min = {"f1" = nan}', "min: 'f1' must be a finite number, got nan"),
        ('max = {"loss" = -inf}', "max: 'loss' must be a finite number, got -inf"),
        ('max_drop_vs_champion = {"f1" = inf}', "'f1' must be a finite number >= 0, got inf"),
        ("lower_is_better = 'loss'", "lower_is_better must be a list of metric names"),
    ]:
        pyproject.write_text(f"[tool.branchflow.gate]\n{table}\n")
        with pytest.raises(BranchflowError, match=message.replace("[", r"\[").replace("?", r"\?")):
            load_settings(tmp_path)


@pytest.mark.e2e
def test_gate_exits_1_beyond_tolerance_and_0_within(
    metrics_repo: Path, copy_repo, monkeypatch: pytest.MonkeyPatch, no_ci_env: None
) -> None:
    repo = copy_repo(metrics_repo)
    monkeypatch.chdir(repo)
    branch_with(repo, "within", f1=0.955, loss=0.14)  # 0.005 and 0.04 worse: allowed
    passed = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert passed.exit_code == 0, passed.output
    assert passed.output.splitlines()[0] == "gate passed: 4 rules"

    branch_with(repo, "worse", f1=0.93, loss=0.2)
    failed = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert failed.exit_code == 1
    assert failed.output.splitlines() == [
        "gate failed: 2 of 4 rules failed",
        "ok: `model.f1` is 0.9300, at least the floor 0.9000",
        "ok: `model.loss` is 0.2000, at most the ceiling 0.5000",
        "FAIL: `model.f1` got worse by 0.0300 vs main (0.9600 → 0.9300); at most 0.0100 allowed",
        "FAIL: `model.loss` got worse by 0.1000 vs main (0.1000 → 0.2000); at most 0.0500 allowed",
        "note: no champion: no MLflow registry configured (MLFLOW_TRACKING_URI unset, no "
        "mlflow.db); champion rules skipped",
    ]


@pytest.mark.e2e
def test_shallow_clone_without_the_base_says_how_to_fetch_it(
    metrics_repo: Path, copy_repo, tmp_path: Path, no_ci_env: None
) -> None:
    origin = copy_repo(metrics_repo)
    branch_with(origin, "feature", f1=0.97)
    sh("git", "commit", "-q", "-am", "more f1", cwd=origin)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", "--depth=1", "--branch=feature", origin.as_uri(), clone, cwd=tmp_path)
    executable = shutil.which("branchflow")
    assert executable, "branchflow is not installed on PATH"
    gate = [executable, "gate", "--base", "origin/main"]
    result = subprocess.run(gate, cwd=clone, capture_output=True, text=True, check=False)
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr == (
        "error: base ref 'origin/main' is not in this clone; "
        "fetch it with: git fetch --depth=1 origin main\n"
    )
    fetched = subprocess.run(
        [*gate, "--fetch"], cwd=clone, capture_output=True, text=True, check=False
    )
    assert fetched.returncode == 0, fetched.stderr
    assert "ok: `model.f1` vs origin/main: 0.9600 → 0.9700, within" in fetched.stdout


# --- noise-aware drop rules: `[tool.branchflow.gate.units]` ---------------------------------

MEAN_HIT = {"f1": parse_formula("hit / 1")}
PAIRED = replace(GATE, units=UnitSettings("units.csv", "unit", MEAN_HIT, resamples=2000))


def hits(*values: int) -> Units:
    return Units("units.csv", {f"u{i:03}": {"hit": float(v)} for i, v in enumerate(values)})


def paired(base: Units | None, branch: Units, champion: Units | None = None) -> Comparison:
    """A comparison whose f1 values are the units' means, as a well-configured stage writes."""
    f1 = {
        name: sum(r["hit"] for r in u.rows.values()) / len(u.rows)
        for name, u in (("base", base), ("branch", branch), ("champion", champion))
        if u is not None
    }
    comp = comparison(
        {"f1": f1.get("base", 0.99), "loss": 0.1},
        {"f1": f1.get("champion", 0.99)},
        f1=f1["branch"],
        loss=0.1,
    )
    missing = {} if base is not None else {"base": "main has no units.csv"}
    return replace(comp, units=UnitTables(branch, base, champion, missing))


def test_a_drop_that_noise_explains_passes_and_a_real_one_fails_with_its_interval() -> None:
    base = hits(*[1] * 194, *[0] * 6)  # 0.97
    noisy = hits(*[0] * 5, *[1] * 189, *[1] * 2, *[0] * 4)  # 5 lost, 2 gained: 0.955
    verdict = evaluate(PAIRED, paired(base, noisy, base))
    assert verdict.passed, verdict.lines()
    text = next(c.text for c in verdict.checks if c.text.startswith("`f1` vs main"))
    assert text.startswith("`f1` vs main: 0.9700 → 0.9550, no detectable change (95% interval -0.0")
    assert text.endswith("of the change over 200 paired units)")
    assert set(verdict.intervals) == {"base", "champion"}
    # The fixed 0.01 would have failed it.
    assert failures(GATE, paired(base, noisy, base))[0].startswith("`f1` got worse by 0.0150")

    worse = hits(*[0] * 12, *[1] * 182, *[0] * 6)  # 12 lost: 0.91
    failed = failures(PAIRED, paired(base, worse, base))
    assert [t.split(":")[0] for t in failed] == [
        "`f1` is 0.9100, below the floor 0.9500",
        "`f1` vs main",
        "`f1` vs champion v3",
    ]
    assert ", worse (95% interval -0.0" in failed[1]
    interval = evaluate(PAIRED, paired(base, worse, base)).intervals["base"]["f1"]
    assert interval.change == pytest.approx(-0.06)
    assert interval.low < interval.change < interval.high < 0


def test_without_units_on_a_side_or_with_other_units_the_fixed_threshold_judges() -> None:
    branch = hits(*[1] * 96, *[0] * 4)
    verdict = evaluate(PAIRED, paired(None, branch, hits(*[1] * 50, *[0] * 2)))
    assert "`f1` vs main: main has no units.csv; judged by its fixed threshold" in verdict.notes
    assert any(
        n.startswith(
            "`f1` vs champion v3: the units differ (52 shared, 48 only here, 0 only there)"
        )
        for n in verdict.notes
    )
    assert verdict.intervals == {"base": {}, "champion": {}}


def test_a_formula_that_does_not_give_the_metrics_value_fails() -> None:
    units = hits(*[1] * 90, *[0] * 10)
    comp = replace(
        paired(units, units), metrics=(Metric("f1", 0.97, 0.9, 0.07), Metric("loss", 0.1, 0.1, 0.0))
    )
    assert failures(PAIRED, comp)[0] == (
        "`f1` is 0.9700, but its formula over units.csv gives 0.9000; "
        "fix [tool.branchflow.gate.units] metrics or the stage"
    )
    renamed = replace(
        paired(units, units),
        units=UnitTables(Units("units.csv", {"a": {"x": 1}, "b": {"x": 0}}), None, None, {}),
    )
    assert "units.csv: no `hit` column for `f1` = hit / 1; fix the stage or " in "".join(
        failures(PAIRED, renamed)
    )


def test_unit_settings_read_well_and_refuse_a_bad_formula_in_one_line(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    table = '[tool.branchflow.gate.units]\nfile = "reports/units.csv"\nkey = "video"\n'
    pyproject.write_text(
        f'{table}[tool.branchflow.gate.units.metrics]\n"a.f1" = "2*tp / (2*tp + fp + fn)"\n'
    )
    units = load_settings(tmp_path).gate.units
    assert units is not None
    assert (units.file, units.key, units.confidence, units.resamples) == (
        "reports/units.csv",
        "video",
        0.95,
        10_000,
    )
    assert units.metrics["a.f1"].denominator == {"tp": 2.0, "fp": 1.0, "fn": 1.0}
    for extra, message in [
        (
            '[tool.branchflow.gate.units.metrics]\n"f1" = "tp + fp"\n',
            "metrics 'f1' = 'tp + fp': must be a ratio",
        ),
        (
            "confidence = 95\n[tool.branchflow.gate.units.metrics]\n",
            "confidence must be a number from 0.5",
        ),
        (
            "resample = 10\n",
            "unknown key 'resample' in [tool.branchflow.gate.units]; did you mean 'resamples'?",
        ),
    ]:
        pyproject.write_text(table + extra)
        with pytest.raises(BranchflowError, match=re.escape(message)):
            load_settings(tmp_path)
    pyproject.write_text('[tool.branchflow.gate.units]\nfile = "u.csv"\n')
    with pytest.raises(
        BranchflowError, match=re.escape("[tool.branchflow.gate.units] needs `key`")
    ):
        load_settings(tmp_path)


def test_the_gate_pairs_the_workspaces_units_with_the_base_commits(
    metrics_repo: Path, copy_repo, monkeypatch: pytest.MonkeyPatch, no_ci_env: None
) -> None:
    """On a real git + DVC project: the base's units.csv is read at the base commit."""
    repo = copy_repo(metrics_repo)
    monkeypatch.chdir(repo)
    with (repo / "pyproject.toml").open("a") as pyproject:
        pyproject.write(
            '\n[tool.branchflow.gate.units]\nfile = "reports/units.csv"\nkey = "unit"\n'
            '[tool.branchflow.gate.units.metrics]\n"model.f1" = "hit / 1"\n'
        )
    write_units(repo, [1] * 192 + [0] * 8)  # 0.96, as params.yaml says
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "units", cwd=repo)
    sh("git", "checkout", "-q", "-b", "noisy", cwd=repo)
    set_f1(repo, 0.945)  # 4 lost, 1 gained: fails a fixed 0.01, not the interval
    write_units(repo, [0] * 4 + [1] * 188 + [1] + [0] * 7)
    result = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert result.exit_code == 0, result.output
    assert (
        "ok: `model.f1` vs main: 0.9600 → 0.9450, no detectable change (95% interval"
        in result.output
    )
    write_units(repo, [0] * 14 + [1] * 178 + [0] * 8)
    set_f1(repo, 0.89)
    result = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert result.exit_code == 1, result.output
    assert "FAIL: `model.f1` vs main: 0.9600 → 0.8900, worse (95% interval -0.1" in result.output


def write_units(repo: Path, values: list[int]) -> None:
    lines = ["unit,hit", *(f"u{i:03},{v}" for i, v in enumerate(values))]
    (repo / "reports" / "units.csv").write_text("\n".join(lines) + "\n")


def set_f1(repo: Path, f1: float) -> None:
    path = repo / "reports" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["model"]["f1"] = f1
    path.write_text(json.dumps(metrics))
