"""`branchflow drift` on statistics of real synthetic datasets, and its settings."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from badpixels import synth
from branchflow.config import DriftSettings, load_settings
from branchflow.drift import compare_stats, read_stats
from branchflow.errors import BranchflowError

# name -> synth arguments; "same" differs from "reference" only in its seed
DATASETS = {
    "reference": ["--videos", "8", "--seed", "0"],
    "same": ["--videos", "8", "--seed", "1"],
    "noisier": ["--videos", "8", "--seed", "0", "--noise", "2.0"],
}


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Statistics files (from `python -m badpixels.datastats`) of the DATASETS."""
    root = tmp_path_factory.mktemp("drift")
    files = {}
    for name, args in DATASETS.items():
        synth.main([*args, "--out", str(root / name)])
        files[name] = root / f"{name}.json"
        result = run("python", "-m", "badpixels.datastats", root / name, files[name], cwd=root)
        assert result.returncode == 0, result.stderr
    return files


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project folder: default settings until a test writes a pyproject.toml."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def drift(
    project: Path, reference: Path, current: Path, *flags: str, output: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`branchflow drift` in `project`, with `$GITHUB_OUTPUT` set only when `output` is given."""
    env = {key: value for key, value in os.environ.items() if key != "GITHUB_OUTPUT"}
    if output:
        env["GITHUB_OUTPUT"] = str(output)
    command = ["branchflow", "drift", "--reference", reference, "--current", current, *flags]
    return subprocess.run(
        [str(a) for a in command], cwd=project, capture_output=True, text=True, env=env
    )


def test_datastats_writes_a_flat_object_of_numbers(stats: dict[str, Path]) -> None:
    values = json.loads(stats["reference"].read_text())
    assert set(values) == {"mean_intensity", "noise_sigma", "defect_rate"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    assert 1.0 < values["noise_sigma"] < 6.0  # grey levels: the generator's read + shot noise


def test_same_distribution_other_seed_is_no_drift(
    stats: dict[str, Path], project: Path, tmp_path: Path
) -> None:
    output = tmp_path / "github_output"
    result = drift(project, stats["reference"], stats["same"], "--fail-on-drift", output=output)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2] == "no drift"
    assert output.read_text() == "drift=false\n"


def test_doubled_noise_is_drift(stats: dict[str, Path], project: Path, tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    result = drift(project, stats["reference"], stats["noisier"], output=output)
    assert result.returncode == 0, result.stderr  # reported, not failed, without the flag
    assert "drift: noise_sigma" in result.stdout.splitlines()
    assert any(line.startswith("DRIFT  noise_sigma") for line in result.stdout.splitlines())
    assert output.read_text() == "drift=true\n"

    failing = drift(project, stats["reference"], stats["noisier"], "--fail-on-drift")
    assert failing.returncode == 1
    assert "written to $GITHUB_OUTPUT" not in failing.stdout  # no GITHUB_OUTPUT, no file


def test_github_output_that_is_a_folder(
    stats: dict[str, Path], project: Path, tmp_path: Path
) -> None:
    result = drift(project, stats["reference"], stats["same"], output=tmp_path)
    assert result.returncode == 3
    assert result.stderr == (
        f"error: $GITHUB_OUTPUT={tmp_path}: cannot append to it (Is a directory); it must name "
        "a writable file, as GitHub Actions sets it\n"
    )


@pytest.mark.parametrize(
    ("content", "bad"),
    [('{"noise_sigma": NaN}', "noise_sigma"), ('{"a": 1, "b": Infinity, "c": true}', "b, c")],
)
def test_statistics_that_are_not_finite_numbers(
    stats: dict[str, Path], project: Path, content: str, bad: str
) -> None:
    current = project / "current.json"
    current.write_text(content)
    result = drift(project, stats["reference"], current)
    assert result.returncode == 3
    assert result.stderr == f"error: {current}: {bad} must be finite numbers\n"


def test_threshold_from_pyproject(stats: dict[str, Path], project: Path) -> None:
    (project / "pyproject.toml").write_text(
        "[tool.branchflow.drift]\nthreshold = 0.25\nthresholds = { noise_sigma = 1.5 }\n"
    )
    assert load_settings(project).drift == DriftSettings(0.25, {"noise_sigma": 1.5})
    result = drift(project, stats["reference"], stats["noisier"], "--fail-on-drift")
    assert result.returncode == 0, result.stdout
    assert "limit 150%" in result.stdout


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("treshold = 0.2", "unknown key 'treshold' in [tool.branchflow.drift]; did you mean"),
        ("threshold = -0.1", "threshold must be a relative change >= 0"),
        ('thresholds = { noise = "high" }', "noise must be a relative change >= 0"),
        ("thresholds = 3", "thresholds must be a table"),
    ],
)
def test_bad_settings_are_errors(project: Path, table: str, message: str) -> None:
    (project / "pyproject.toml").write_text(f"[tool.branchflow.drift]\n{table}\n")
    with pytest.raises(BranchflowError) as error:
        load_settings(project)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found; write the data statistics first"),
        ('{"noise_sigma": "high"}', "noise_sigma must be finite numbers"),
        ("[1, 2]", "must be a JSON object of statistic name -> number"),
        ("{", "not a readable JSON file"),
    ],
)
def test_bad_statistics_files_are_one_line_errors(
    stats: dict[str, Path], project: Path, content: str | None, message: str
) -> None:
    current = project / "current.json"
    if content is not None:
        current.write_text(content)
    result = drift(project, stats["reference"], current)
    assert result.returncode == 3
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_statistics_must_match_and_thresholds_must_name_them(stats: dict[str, Path]) -> None:
    reference = read_stats(stats["reference"])
    with pytest.raises(BranchflowError, match="differ in defect_rate"):
        compare_stats(
            reference, {k: v for k, v in reference.items() if k != "defect_rate"}, DriftSettings()
        )
    with pytest.raises(BranchflowError, match="thresholds name noise, which the statistics lack"):
        compare_stats(reference, reference, DriftSettings(thresholds={"noise": 1.0}))


def test_relative_change_from_a_zero_reference() -> None:
    result = compare_stats({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.1}, DriftSettings())
    assert [c.drifted for c in result.changes] == [False, True]
    assert "new, reference 0" in result.lines()[1]
    assert result.lines()[-1] == "drift: b"
