"""The stage runner: typed params with clear errors, atomic outputs, parallel maps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from badpixels.stage import (
    StageError,
    atomic_output,
    load_params,
    parallel_map,
    param,
    remove_leftovers,
    shard,
    usable_cores,
    write_json,
)


@dataclass(frozen=True)
class Example:
    workers: int
    rate: float
    name: str


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_load_params_reads_typed_section(tmp_path: Path) -> None:
    path = write(tmp_path, "ex:\n  workers: 2\n  rate: 1\n  name: a\nother:\n  x: 1\n")
    assert load_params(Example, "ex", path) == Example(workers=2, rate=1.0, name="a")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ex: [unclosed\n", "not valid YAML at line"),
        ("other:\n  x: 1\n", "no 'ex:' section"),
        ("ex:\n  workers: 2\n  rate: 1.0\n", "missing key 'ex.name'"),
        ("ex:\n  workers: two\n  rate: 1.0\n  name: a\n", "'ex.workers' must be int, got 'two'"),
        ("ex:\n  workers: true\n  rate: 1.0\n  name: a\n", "'ex.workers' must be int"),
        ("ex:\n  worker: 2\n  rate: 1.0\n  name: a\n", "did you mean 'ex.workers'?"),
        ("ex:\n  workers: 2\n  rate: 1e-3\n  name: a\n", "YAML reads 1e-3 as text"),
        ("ex:\n  workers: 2\n  rate: .nan\n  name: a\n", "'ex.rate' must be a finite number,"),
        ("ex:\n  workers: 2\n  rate: -.inf\n  name: a\n", "must be a finite number, got -inf"),
    ],
)
def test_load_params_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StageError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load_params(Example, "ex", path)


@dataclass(frozen=True)
class Bounded:
    size: int = param(at_least=3, odd=True)
    share: float = param(above=0, below=1)


@pytest.mark.parametrize(
    ("size", "share", "message"),
    [
        (4, 0.5, "'b.size' must be a whole number >= 3 and odd, got 4"),
        (1, 0.5, "'b.size' must be a whole number >= 3 and odd, got 1"),
        (3, 0, "'b.share' must be a finite number > 0 and < 1, got 0.0"),
        (3, 1, "'b.share' must be a finite number > 0 and < 1, got 1.0"),
        (3, ".nan", "'b.share' must be a finite number > 0 and < 1, got nan"),
        (3, ".inf", "'b.share' must be a finite number > 0 and < 1, got inf"),
    ],
)
def test_bounds_are_checked_at_load(tmp_path: Path, size: int, share: object, message: str) -> None:
    path = write(tmp_path, f"b:\n  size: {size}\n  share: {share}\n")
    with pytest.raises(StageError) as raised:
        load_params(Bounded, "b", path)
    assert message in str(raised.value)
    assert load_params(Bounded, "b", write(tmp_path, "b:\n  size: 5\n  share: 0.25\n")).size == 5


def test_params_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"ex:\n  name: caf\xe9\n")
    with pytest.raises(StageError, match=r"not UTF-8 text \(byte 0xe9 at offset 15\); save it"):
        load_params(Example, "ex", path)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="not found"):
        load_params(Example, "ex", tmp_path / "params.yaml")


def test_atomic_output_replaces_a_directory_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("stage failed")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_output(out) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left


def test_atomic_output_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.json"
    with atomic_output(target) as tmp:
        tmp.write_text("{}")
    assert target.read_text() == "{}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.json"]


def test_write_json_refuses_nan_and_infinity(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("previous")
    for value, shown in [(float("nan"), "nan"), (float("-inf"), "-inf")]:
        with pytest.raises(StageError, match=rf"'cnn.kinds.1' came out {shown}, which JSON"):
            write_json(target, {"cnn": {"f1": 0.5, "kinds": [0.1, value]}})
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_json(target, {"f1": 0.5}, indent=2)
    assert json.loads(target.read_text()) == {"f1": 0.5}


def test_leftovers_of_a_killed_run_go_and_nothing_else(tmp_path: Path) -> None:
    """A killed `atomic_output("frames")` leaves `.frames.<random>.tmp` (and, killed while
    swapping, `.frames.old`); only those go, not another output's or a file of the same name."""
    leftovers = [".frames.k2j4_x9a.tmp", ".frames.old"]
    kept_dirs = [".frames.json.k2j4_x9a.tmp", ".framesx.k2j4_x9a.tmp", "frames.k2j4_x9a.tmp"]
    for name in leftovers + kept_dirs:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.npy").write_text("half")
    (tmp_path / ".frames.abc.tmp").write_text("a file, not a temporary folder")
    remove_leftovers(tmp_path / "frames")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept_dirs, ".frames.abc.tmp"])
    with atomic_output(tmp_path / "other") as tmp:  # a run removes only its own output's
        tmp.write_text("ok")
    assert len(list(tmp_path.iterdir())) == 5


def test_workers_are_capped_at_the_usable_cores(capsys: pytest.CaptureFixture[str]) -> None:
    cores = usable_cores()
    assert parallel_map(_square, range(5), cores + 38, desc="frames") == [0, 1, 4, 9, 16]
    note = f"note: frames: {cores + 38} workers asked for, {cores} usable cores; using {cores}"
    assert capsys.readouterr().err.strip().splitlines()[0] == note


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_map_keeps_order(workers: int) -> None:
    assert parallel_map(_square, range(7), workers, desc="t") == [x * x for x in range(7)]


def test_shards_split_the_work_and_cover_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(10))
    assert shard(items) == items  # no shard variables: all of it, as under `dvc repro`
    parts = []
    for index in range(3):
        monkeypatch.setenv("BRANCHFLOW_SHARD_INDEX", str(index))
        monkeypatch.setenv("BRANCHFLOW_SHARD_COUNT", "3")
        parts.append(shard(items))
    assert sorted(x for part in parts for x in part) == items
    assert [len(part) for part in parts] == [4, 3, 3]
    monkeypatch.setenv("BRANCHFLOW_SHARD_INDEX", "3")
    with pytest.raises(StageError, match="need 0 <= index < count"):
        shard(items)


def test_an_azure_ml_tracking_uri_without_its_plugin_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What an Azure ML node sets; azureml-mlflow caps MLflow below the locked one."""
    from badpixels.score import tracking_uri
    from badpixels.stage import StageError

    uri = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(StageError) as error:
        tracking_uri()
    assert str(error.value) == (
        "MLFLOW_TRACKING_URI is an Azure ML workspace (azureml://westeurope.api.azureml.ms/"
        "mlflow/v1.0), which MLflow reads only with the azureml-mlflow plugin, not installed "
        "here; point it at the registry that holds the pinned model (on Azure ML nodes: "
        "[tool.branchflow.azureml] mlflow_tracking_uri)"
    )
