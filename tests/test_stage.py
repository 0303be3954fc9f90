"""The stage runner: typed params with clear errors, atomic outputs, parallel maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from badpixels.stage import StageError, atomic_output, load_params, parallel_map


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
    ],
)
def test_load_params_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StageError, match=message.replace("?", r"\?").replace("(", r"\(")):
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


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_map_keeps_order(workers: int) -> None:
    assert parallel_map(_square, range(7), workers, desc="t") == [x * x for x in range(7)]
