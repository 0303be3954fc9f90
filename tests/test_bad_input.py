"""Bad input ends in a short message naming the file and the fix, exit 1, no traceback,
and no half-written output: each stage run as DVC runs it, `python -m badpixels.<stage>`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from badpixels.synth import main as synth_main

ROOT = Path(__file__).resolve().parents[1]
RAW = "data/raw/toy"
MANIFEST = "data/interim/manifest.json"


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw") / "toy"
    synth_main(["--videos", "4", "--out", str(raw)])
    return raw


@pytest.fixture
def project(tmp_path: Path, small_raw: Path) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(small_raw, tmp_path / RAW)
    return tmp_path


def stage(project: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"badpixels.{name}", *args],
        cwd=project,
        capture_output=True,
        text=True,
    )


def assert_clear_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr


def test_valid_data_passes(project: Path) -> None:
    result = stage(project, "validate", RAW, MANIFEST)
    assert result.returncode == 0, result.stderr
    assert (project / MANIFEST).read_text().count('"id"') == 4


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda t: t.replace("min_frames: 8", "min_frames: [8"), ["params.yaml", "not valid YAML"]),
        (lambda t: t.replace("min_frames: 8", "min_frames: eight"), ["'validate.min_frames'"]),
        (lambda t: t.replace("min_frames: 8", "min_frame: 8"), ["did you mean"]),
        (lambda t: t.replace("validate:\n  min_frames: 8\n", ""), ["no 'validate:' section"]),
    ],
)
def test_bad_params_leave_no_output(project: Path, edit, fragments: list[str]) -> None:
    params = project / "params.yaml"
    params.write_text(edit(params.read_text()))
    (project / MANIFEST).parent.mkdir(parents=True)
    (project / MANIFEST).write_text("previous")
    result = stage(project, "validate", RAW, MANIFEST)
    assert_clear_failure(result, *fragments)
    assert len(result.stderr.strip().splitlines()) <= 2
    assert (project / MANIFEST).read_text() == "previous"


def test_missing_key_in_another_stage(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("frames:\n  workers: 2\n", "frames: {}\n"))
    assert_clear_failure(stage(project, "frames", RAW, MANIFEST, "out"), "'frames.workers'")


def corrupt_video(raw: Path, how: str) -> None:
    video = raw / "videos" / "vid0001.mkv"
    if how == "missing":
        video.unlink()
    elif how == "truncated":
        video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    else:
        video.write_text("this is not a video\n")


@pytest.mark.parametrize(
    ("how", "fragment"),
    [
        ("missing", "video 'vid0001' is not among the readable videos"),
        ("truncated", "vid0001.mkv: 11 frames of 64x64, but most videos have 24"),
        ("text", "vid0001.mkv: not a readable video"),
    ],
)
def test_broken_videos_are_listed(project: Path, how: str, fragment: str) -> None:
    corrupt_video(project / RAW, how)
    result = stage(project, "validate", RAW, MANIFEST)
    assert_clear_failure(result, fragment)
    assert not (project / MANIFEST).exists()
    assert list((project / "data").iterdir()) == [project / "data" / "raw"]  # no temporaries


def test_labels_outside_the_frame(project: Path) -> None:
    with (project / RAW / "labels.csv").open("a") as labels:
        labels.write("vid0002,64,3,hot\nvid0002,5,5,warm\n")
    result = stage(project, "validate", RAW, MANIFEST)
    assert_clear_failure(result, "2 problem(s)", "(64, 3) is outside the 64x64 frame", "'warm'")


def test_missing_data_says_dvc_pull(project: Path) -> None:
    shutil.rmtree(project / RAW)
    assert_clear_failure(stage(project, "validate", RAW, MANIFEST), "run `dvc pull`")
