"""`branchflow drift` on statistics of real synthetic datasets, and its settings."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from badpixels import synth
from branchflow.drift import Limit, compare_stats, limit_for, read_stats
from branchflow.errors import BranchflowError
from branchflow.settings import DriftSettings, load_settings

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
    [
        ('{"noise_sigma": NaN}', "noise_sigma"),
        ('{"a": 1, "b": Infinity, "c": true}', "b"),
        ('{"a": {"b": [1, NaN]}, "c": -1e999}', "a.b.1, c"),
        ('{"big": 1' + "0" * 400 + "}", "big"),
    ],
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
        ('thresholds = { noise = "high" }', "thresholds: 'noise' must be a relative change >= 0"),
        ("thresholds = { a.b = nan }", "thresholds: 'a.b' must be a relative change >= 0"),
        ("absolute = { a = -1 }", "absolute: 'a' must be an absolute change >= 0, in the"),
        ("thresholds = 3", "thresholds must be a table"),
        ('ignore = "meta"', "drift.ignore must be a list of non-empty strings"),
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
        ("[1, 2]", "must be a JSON object of statistic name -> value"),
        ("{", "not a readable JSON file"),
        ('{"a": {}, "b": []}', "holds no statistics"),
        ('{"a": 1, "a": 2}', "not a readable JSON file (key 'a' given twice)"),
        ('{"a.b": 1, "a": {"b": 2}}', "the statistic a.b is there twice"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deep"),
        ("/dev/zero", "not a regular file"),
    ],
)
def test_bad_statistics_files_are_one_line_errors(
    stats: dict[str, Path], project: Path, content: str | None, message: str
) -> None:
    current = project / "current.json"
    if content == "/dev/zero":
        current.symlink_to(content)
    elif content is not None:
        current.write_text(content)
    result = drift(project, stats["reference"], current)
    assert result.returncode == 3
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_relative_change_from_a_zero_reference() -> None:
    result = compare_stats({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.1}, DriftSettings())
    assert [c.drifted for c in result.changes] == [False, True]
    assert "new, reference 0" in result.lines()[1]
    assert result.lines()[-1] == "drift: b"


# --- the generic form: any two JSON files of statistics ------------------------------------

REFERENCE = {
    "rows": 1000,
    "columns": {"age": {"mean": 40.0, "null_share": 0.0}, "city": {"top": "Paris"}},
    "histogram": [10, 20, 30],
    "meta": {"computed_at": "2024-01-01", "valid": True, "note": None},
}


def write(folder: Path, name: str, document: object) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def current_with(**changes: object) -> dict[str, object]:
    """REFERENCE with dotted names set (None removes one)."""
    document = json.loads(json.dumps(REFERENCE))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = document
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return document


def test_nested_objects_and_lists_flatten_to_dotted_names(tmp_path: Path) -> None:
    assert read_stats(write(tmp_path, "reference", REFERENCE)) == {
        "rows": 1000.0,
        "columns.age.mean": 40.0,
        "columns.age.null_share": 0.0,
        "columns.city.top": "Paris",
        "histogram.0": 10.0,
        "histogram.1": 20.0,
        "histogram.2": 30.0,
        "meta.computed_at": "2024-01-01",
        "meta.valid": True,
        "meta.note": None,
    }


def test_unchanged_statistics_are_no_drift(tmp_path: Path) -> None:
    same = read_stats(write(tmp_path, "reference", REFERENCE))
    result = compare_stats(same, same, DriftSettings())
    assert not result.drifted
    assert result.lines()[-1] == "no drift"
    assert "ok     meta.note               null -> null  (unchanged)" in result.lines()


@pytest.mark.parametrize(
    ("changes", "drifted"),
    [
        ({"columns__age__mean": 45.0}, []),  # +12.5 %, within the default 25 %
        ({"columns__age__mean": 55.0}, ["columns.age.mean"]),
        ({"columns__city__top": "Lyon"}, ["columns.city.top"]),
        ({"meta__valid": 1}, ["meta.valid"]),  # true became a number: changed
        ({"meta__note": "x"}, ["meta.note"]),
        ({"histogram": [10, 20, 30, 40]}, ["histogram.3"]),
        ({"columns__city": None}, ["columns.city.top"]),
    ],
)
def test_what_drifts(tmp_path: Path, changes: dict[str, object], drifted: list[str]) -> None:
    reference = read_stats(write(tmp_path, "reference", REFERENCE))
    current = read_stats(write(tmp_path, "current", current_with(**changes)))
    result = compare_stats(reference, current, DriftSettings())
    assert result.lines()[-1] == (f"drift: {', '.join(drifted)}" if drifted else "no drift")


def test_a_statistic_in_one_file_only_is_reported(tmp_path: Path) -> None:
    reference = read_stats(write(tmp_path, "reference", REFERENCE))
    current = read_stats(
        write(tmp_path, "current", current_with(rows=None, columns__size={"mean": 1}))
    )
    result = compare_stats(reference, current, DriftSettings())
    assert (result.only_in_reference, result.only_in_current) == (("rows",), ("columns.size.mean",))
    lines = result.lines()
    assert "DRIFT  rows                    only in the reference" in lines
    assert "DRIFT  columns.size.mean       only in the current statistics" in lines
    assert lines[-1] == "drift: columns.size.mean, rows"


def test_limits_per_name_pattern_and_absolute(tmp_path: Path) -> None:
    settings = DriftSettings(
        threshold=0.1,
        thresholds={"columns.*": 0.5, "columns.age.mean": 0.2, "histogram.*": 1.0},
        absolute={"columns.*.null_share": 0.01},
        ignore=("meta.*",),
    )
    assert limit_for("rows", settings) == Limit(0.1)
    assert limit_for("columns.age.mean", settings) == Limit(0.2)  # exact name before pattern
    assert limit_for("columns.age.null_share", settings) == Limit(0.01, absolute=True)
    assert limit_for("columns.city.top", settings) == Limit(0.5)
    reference = read_stats(write(tmp_path, "reference", REFERENCE))
    changes = {
        "columns__age__mean": 47.0,  # +17.5 %: within its 20 %
        "columns__age__null_share": 0.02,  # from 0: +0.02 is past its absolute 0.01
        "histogram": [19, 39, 59],  # just under +100 %
        "meta__computed_at": "2024-06-01",  # ignored
    }
    current = read_stats(write(tmp_path, "current", current_with(**changes)))
    result = compare_stats(reference, current, settings)
    assert [c.name for c in result.changes if c.drifted] == ["columns.age.null_share"]
    assert not any(c.name.startswith("meta.") for c in result.changes)
    lines = result.lines()
    assert "DRIFT  columns.age.null_share  0 -> 0.02  (+0.02, limit 0.01)" in lines
    assert "ok     columns.age.mean        40 -> 47  (+17.5%, limit 20%)" in lines


@pytest.mark.parametrize("rule", ["thresholds", "absolute", "ignore"])
def test_limits_must_name_a_statistic(tmp_path: Path, rule: str) -> None:
    stats = read_stats(write(tmp_path, "reference", current_with(extra=[0, 1, 2, 3, 4])))
    patterns = ("colums.*",) if rule == "ignore" else {"colums.*": 1.0}
    with pytest.raises(BranchflowError) as error:
        compare_stats(stats, stats, DriftSettings(**{rule: patterns}))
    assert str(error.value).startswith(
        f"[tool.branchflow.drift] {rule} name colums.*, which match no statistic; known: "
        "columns.age.mean, columns.age.null_share, columns.city.top, extra.0,"
    )
    assert str(error.value).endswith(", ... (15 in all)")


def test_nested_limits_from_pyproject(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        "[tool.branchflow.drift]\nthreshold = 0.1\nignore = ['meta.*']\n"
        "[tool.branchflow.drift.thresholds]\ncolumns.age.mean = 0.2\n'histogram.*' = 1\n"
        "[tool.branchflow.drift.absolute]\n'columns.*.null_share' = 0.01\n"
    )
    assert load_settings(project).drift == DriftSettings(
        0.1,
        {"columns.age.mean": 0.2, "histogram.*": 1.0},
        {"columns.*.null_share": 0.01},
        ("meta.*",),
    )


def test_generic_files_on_the_command_line(project: Path, tmp_path: Path) -> None:
    reference = write(tmp_path, "reference", REFERENCE)
    current = write(tmp_path, "current", current_with(columns__age__mean=47.0))
    assert drift(project, reference, current, "--fail-on-drift").returncode == 0
    strict = drift(project, reference, current, "--fail-on-drift", "--threshold", "0.1")
    assert strict.returncode == 1, strict.stderr
    assert "DRIFT  columns.age.mean        40 -> 47  (+17.5%, limit 10%)" in strict.stdout
    assert drift(project, reference, current, "--threshold", "nan").returncode == 2
