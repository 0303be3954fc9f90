"""Bad input ends in a short message naming the file and the fix, exit 1, no traceback,
and no half-written output: each stage run as DVC runs it, `python -m badpixels.<stage>`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
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
    text = params.read_text()
    assert "  patch: 5 " in text
    params.write_text(text.replace("  patch: 5 ", "  # patch: 5 "))
    result = stage(project, "features", "frames", f"{RAW}/labels.csv", "out")
    assert_clear_failure(result, "missing key 'features.patch'")


def test_a_worker_count_left_out_defaults_to_the_usable_cores(project: Path) -> None:
    """What an Azure ML node sees: only a stage's declared params, and frames declares none."""
    assert stage(project, "validate", RAW, MANIFEST).returncode == 0
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("frames:\n  workers: 2\n", ""))
    result = stage(project, "frames", RAW, MANIFEST, "out")
    assert result.returncode == 0, result.stderr
    assert len(list((project / "out").glob("*.npy"))) == 4


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


# --- every param and file each stage reads --------------------------------------------------

FEATURES = ("data/interim/frames", f"{RAW}/labels.csv", "data/processed/new")
STAGES = {
    "validate": (RAW, "data/interim/new.json"),
    "frames": (RAW, MANIFEST, "data/interim/new"),
    "features": FEATURES,
    "train": ("data/processed/features", "models/new.pt"),
}


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, small_raw: Path) -> Path:
    """A project on one worker, through `validate`, `frames` and `features`."""
    root = tmp_path_factory.mktemp("staged")
    params = (ROOT / "params.yaml").read_text().replace("workers: 2", "workers: 1")
    (root / "params.yaml").write_text(params)
    shutil.copytree(small_raw, root / RAW)
    for name, args in [
        ("validate", (RAW, MANIFEST)),
        ("frames", (RAW, MANIFEST, "data/interim/frames")),
    ]:
        assert stage(root, name, *args).returncode == 0
    assert stage(root, "features", *FEATURES[:2], "data/processed/features").returncode == 0
    return root


@pytest.fixture
def stages(staged: Path, tmp_path: Path) -> Path:
    """A copy of `staged` this test may change."""
    return Path(shutil.copytree(staged, tmp_path / "project"))


def assert_nothing_written(project: Path, name: str) -> None:
    out = project / STAGES[name][-1]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def edit_params(project: Path, old: str, new: str) -> None:
    params = project / "params.yaml"
    assert old in params.read_text()
    params.write_text(params.read_text().replace(old, new, 1))


@pytest.mark.parametrize(
    ("name", "old", "new", "fragment"),
    [
        (
            "validate",
            "min_frames: 8",
            "min_frames: 1",
            "'validate.min_frames' must be a whole number >= 2, got 1",
        ),
        (
            "frames",
            "workers: 1",
            "workers: 0",
            "'frames.workers' must be a whole number >= 1, got 0",
        ),
        (
            "features",
            "test_fraction: 0.25",
            "test_fraction: .nan",
            "'features.test_fraction' must be a finite number > 0 and < 1, got nan",
        ),
        (
            "features",
            "test_fraction: 0.25",
            "test_fraction: 0.1",
            "'features.test_fraction' 0.1 holds out 0 of 4 videos",
        ),
        (
            "features",
            "patch: 5 ",
            "patch: 1001 ",
            "at most a quarter of that (16), as its memory grows",
        ),
        (
            "features",
            "residual_threshold: 30.0",
            "residual_threshold: .nan",
            "'features.residual_threshold' must be a finite number >= 0 and <= 255, got nan",
        ),
    ],
)
def test_bad_param_values_are_refused_before_any_work(
    stages: Path, name: str, old: str, new: str, fragment: str
) -> None:
    edit_params(stages, old, new)
    result = stage(stages, name, *STAGES[name])
    assert_clear_failure(result, "params.yaml: ", fragment)
    assert len(result.stderr.strip().splitlines()) <= 2
    assert_nothing_written(stages, name)


@pytest.mark.parametrize(
    ("section", "old", "new", "fragment"),
    [
        ("train", "epochs: 12", "epochs: 0", "'train.epochs' must be a whole number >= 1, got 0"),
        *(
            (
                "features",
                "test_fraction: 0.25",
                f"test_fraction: {bad}",
                f"'features.test_fraction' must be a finite number > 0 and < 1, got {shown}",
            )
            for bad, shown in [(".inf", "inf"), ("0", "0.0"), ("1", "1.0")]
        ),
        (
            "train",
            "batch_size: 256",
            "batch_size: 0",
            "'train.batch_size' must be a whole number >= 1",
        ),
        (
            "train",
            "width: 32",
            "width: -4",
            "'train.width' must be a whole number >= 1 and <= 1024",
        ),
        (
            "train",
            "learning_rate: 0.003",
            "learning_rate: .nan",
            "'train.learning_rate' must be a finite number > 0, got nan",
        ),
        (
            "train",
            "learning_rate: 0.003",
            "learning_rate: 0",
            "'train.learning_rate' must be a finite number > 0, got 0.0",
        ),
        (
            "train",
            "seed: 0\n\nevaluate",
            "seed: -1\n\nevaluate",
            "'train.seed' must be a whole number >= 0 and < 4294967296",
        ),
        (
            "features",
            "seed: 0\n  workers: 1",  # the first `workers: 1` is the frames stage's
            "seed: 0\n  workers: -2",
            "'features.workers' must be a whole number >= 1",
        ),
        (
            "evaluate",
            "baseline_threshold: 20.0",
            "baseline_threshold: .inf",
            "'evaluate.baseline_threshold' must be a finite number >= 0 and <= 255, got inf",
        ),
    ],
)
def test_each_stage_checks_its_params_where_it_loads_them(
    stages: Path, section: str, old: str, new: str, fragment: str
) -> None:
    """The stages' own params classes, read as their `main` reads them (a subprocess each
    would spend seconds importing torch)."""
    from badpixels.evaluate import EvaluateParams
    from badpixels.features import FeaturesParams
    from badpixels.stage import StageError, load_params
    from badpixels.train import TrainParams

    classes = {"train": TrainParams, "features": FeaturesParams, "evaluate": EvaluateParams}
    edit_params(stages, old, new)
    with pytest.raises(StageError) as raised:
        load_params(classes[section], section, stages / "params.yaml")
    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("batch_size: 256", "batch_size: 100000", "'train.batch_size' is 100000, more than the"),
        ("learning_rate: 0.003", "learning_rate: 1.0e+30", "training diverged (NaN or infinite"),
    ],
)
def test_training_that_cannot_learn_saves_no_model(
    stages: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str, fragment: str
) -> None:
    """Today's alternatives: a model that never took a step, or one of NaN weights."""
    from badpixels import train
    from badpixels.stage import StageError

    edit_params(stages, "epochs: 12", "epochs: 1")
    edit_params(stages, old, new)
    monkeypatch.chdir(stages)
    with pytest.raises(StageError, match=re.escape(fragment)):
        train.main(list(STAGES["train"]))
    assert_nothing_written(stages, "train")


@pytest.mark.parametrize("name", ["validate", "features"])
def test_labels_that_are_not_utf8(stages: Path, name: str) -> None:
    labels = stages / RAW / "labels.csv"
    size = labels.stat().st_size
    labels.write_bytes(labels.read_bytes() + b"vid0001,3,4,h\xf6t\n")
    result = stage(stages, name, *STAGES[name])
    assert_clear_failure(
        result, f"labels.csv: not UTF-8 text (byte 0xf6 at offset {size + 13}); restore it"
    )
    assert_nothing_written(stages, name)


def test_a_manifest_that_is_not_one(stages: Path) -> None:
    (stages / MANIFEST).write_text('{"videos": 3}')
    result = stage(stages, "frames", *STAGES["frames"])
    assert_clear_failure(result, "manifest.json: not readable as an output of stage `validate`")
    assert_nothing_written(stages, "frames")


def test_workers_beyond_the_cores_are_capped_with_a_note(stages: Path) -> None:
    edit_params(stages, "workers: 1", "workers: 40")
    result = stage(stages, "frames", *STAGES["frames"])
    assert result.returncode == 0, result.stderr
    assert "note: frames: 40 workers asked for, " in result.stderr
    made = sorted((stages / "data/interim/new").iterdir())
    assert [p.read_bytes() for p in made] == [
        (stages / "data/interim/frames" / p.name).read_bytes() for p in made
    ]


# --- a killed stage -------------------------------------------------------------------------


def test_a_killed_stage_leaves_a_temporary_that_its_next_run_removes(stages: Path) -> None:
    """SIGKILL `frames` while it writes (blocked reading a video from a FIFO, inside its
    temporary output folder), then run it again."""
    video = stages / RAW / "videos" / "vid0002.mkv"
    saved = video.read_bytes()
    video.unlink()
    os.mkfifo(video)
    interim = stages / "data" / "interim"
    command = [sys.executable, "-m", "badpixels.frames", *STAGES["frames"]]
    process = subprocess.Popen(
        command, cwd=stages, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not list((interim).glob(".new.*.tmp/new/vid0001.npy")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    leftover = [p.name for p in interim.iterdir() if p.name.startswith(".new.")]
    assert len(leftover) == 1 and leftover[0].endswith(".tmp")  # what a kill leaves
    assert not (interim / "new").exists()
    video.unlink()
    video.write_bytes(saved)

    result = stage(stages, "frames", *STAGES["frames"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in interim.iterdir()) == ["frames", "manifest.json", "new"]
    for made in (interim / "new").iterdir():
        assert made.read_bytes() == (interim / "frames" / made.name).read_bytes()
