"""The scoring pipeline (pipelines/scoring/dvc.yaml), `branchflow pin` and the champion served by
`mlflow models serve`, on a fresh clone of this checkout: real DVC, MLflow's local store, a real
HTTP server; no mocks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from badpixels.model import Detector
from badpixels.video import read_video
from tests.conftest import (
    ROOT,
    answers,
    branch_names,
    built_repo,
    free_port,
    hide_ci_variables,
    sh,
)
from tests.test_pipeline import METRIC_TOLERANCE

pytestmark = pytest.mark.e2e

SCORING = "pipelines/scoring/dvc.yaml"
PIN = "pipelines/scoring/model.json"
BATCH = "data/batches/toy"
MAPS = Path("data/scoring/maps")
SUMMARY = Path("data/scoring/summary.json")
SCORE = ["python", "-m", "badpixels.score", PIN, BATCH, str(MAPS)]


@pytest.fixture(scope="module")
def scored(reproduced_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone after `dvc repro` (the training pipeline only), its model registered and
    promoted into its local store, pinned, and scored. Do not modify it: copy it first."""
    assert not (reproduced_repo / MAPS).exists(), "`dvc repro` ran the scoring pipeline"

    def make(dest: Path) -> None:
        shutil.copytree(reproduced_repo, dest, symlinks=True)
        with pytest.MonkeyPatch.context() as patch:
            hide_ci_variables(patch)
            for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
                patch.delenv(variable, raising=False)
            sh("dvc", "pull", "-q", f"{BATCH}.dvc", cwd=dest)
            model = branch_names(dest, "main").model
            sh("branchflow", "register", cwd=dest)
            sh("branchflow", "promote", f"models:/{model}@candidate", cwd=dest)
            sh("branchflow", "pin", "--out", PIN, cwd=dest)
            sh("dvc", "repro", "-q", SCORING, cwd=dest)

    return built_repo(tmp_path_factory, "scored", make)


@pytest.fixture
def local_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CI variables and no MLFLOW_TRACKING_URI: each repository's own mlflow.db."""
    hide_ci_variables(monkeypatch)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(variable, raising=False)


def changed_stages(repo: Path) -> set[str]:
    """The stages of both pipelines that `dvc status` says would rerun."""
    status = sh("dvc", "status", "--json", "dvc.yaml", SCORING, cwd=repo)
    return set(json.loads(status.stdout))


def batch_frames(repo: Path, video: str) -> np.ndarray:
    return read_video(repo / BATCH / "videos" / f"{video}.mkv")


def test_scoring_maps_the_batch_with_the_pinned_champion(scored: Path) -> None:
    """One map per video, equal to the trained model's; the summary agrees with the labels as
    well as training's held-out F1 (less 0.02); a second repro runs nothing."""
    summary = json.loads((scored / SUMMARY).read_text())
    videos = sorted(p.stem for p in (scored / BATCH / "videos").glob("*.mkv"))
    assert (
        sorted(p.stem for p in (scored / MAPS).glob("*.npy")) == videos == sorted(summary["videos"])
    )
    assert summary["model"] == json.loads((scored / PIN).read_text())
    assert summary["model"]["version"] == "1"
    found = np.load(scored / MAPS / "vid0000.npy")
    assert np.array_equal(
        found, Detector(scored / "models/model.pt").detect(batch_frames(scored, "vid0000"))
    )
    kinds = summary["defects"]
    assert kinds == {k: sum(v["defects"][k] for v in summary["videos"].values()) for k in kinds}
    held_out = json.loads((scored / "reports/metrics.json").read_text())["cnn"]["overall"]["f1"]
    assert summary["agreement"]["f1"] >= held_out - 0.02
    again = sh("dvc", "repro", SCORING, cwd=scored)
    assert "Running stage" not in again.stdout
    assert changed_stages(scored) == set()
    # The committed metrics are what a fresh clone's scoring writes, within the tolerance of a
    # model trained on another machine's floating-point kernels (exactly, where it is the same).
    metrics = json.loads((scored / "data/scoring/metrics.json").read_text())
    assert metrics == {"agreement": summary["agreement"], "defects": kinds}
    committed = json.loads((ROOT / "data/scoring/metrics.json").read_text())["agreement"]
    for name, value in committed.items():
        assert abs(metrics["agreement"][name] - value) <= METRIC_TOLERANCE, name


def test_the_scoring_pipeline_has_its_own_report_and_gate(
    scored: Path, copy_repo: Callable[[Path], Path], local_store: None
) -> None:
    """`--pipeline scoring`: its metrics only, none of training's plots, no champion, judged
    by its own gate."""
    repo = copy_repo(scored)
    report = sh("branchflow", "report", "--pipeline", "scoring", "--base", "HEAD", cwd=repo)
    assert report.stdout.startswith("wrote report.md: gate passed")
    document = json.loads((repo / "report.json").read_text())
    names = [metric["name"] for metric in document["metrics"]]
    assert names[0] == "agreement.f1" and not [n for n in names if n.startswith("cnn.")]
    assert document["champion"] is None and document["plots"] == []
    assert not list((repo / "report_files").glob("*.png"))
    assert sh("branchflow", "gate", "--pipeline", "scoring", cwd=repo).returncode == 0
    f1 = json.loads((repo / "data/scoring/metrics.json").read_text())["agreement"]["f1"]
    floor = round(f1 + 0.005, 4)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('"agreement.f1" = 0.95', f'"agreement.f1" = {floor}')
    )
    refused = sh("branchflow", "gate", "--pipeline", "scoring", cwd=repo, check=False)
    assert refused.returncode == 1
    assert f"`agreement.f1` is {f1:.4f}, below the floor {floor:.4f}" in refused.stdout


@contextlib.contextmanager
def serving(repo: Path, production: str) -> Iterator[str]:
    """`mlflow models serve` of `production@champion` from `repo`'s local store; its URL."""
    port = free_port()
    command = ["mlflow", "models", "serve", "-m", f"models:/{production}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    store = f"sqlite:///{repo / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store}
    with (repo / "serve.log").open("ab") as log:
        server = subprocess.Popen(
            command, cwd=repo, env=env, stdout=log, stderr=log, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not answers(f"{url}/ping"):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow models serve did not start:\n{(repo / 'serve.log').read_text()}"
                )
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def invoke(url: str, body: bytes) -> tuple[int, dict]:
    """POST `body` to `/invocations`: the status and the JSON answer."""
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def served_map(url: str, frames: np.ndarray) -> np.ndarray:
    status, answer = invoke(url, json.dumps({"inputs": frames.tolist()}).encode())
    assert status == 200, answer
    return np.asarray(answer["predictions"])


def test_the_served_champion_maps_like_the_scoring_stage(scored: Path, local_store: None) -> None:
    """MLflow's scoring protocol gives the stage's map; a malformed request gets a 400 that
    names the problem."""
    production = json.loads((scored / PIN).read_text())["name"]
    with serving(scored, production) as url:
        found = served_map(url, batch_frames(scored, "vid0003"))
        assert np.array_equal(found, np.load(scored / MAPS / "vid0003.npy"))
        status, answer = invoke(url, b'{"inputs": "not frames"}')
        assert status == 400
        assert "Tensor('uint8', (-1, -1, -1))" in answer["message"]
        status, answer = invoke(url, b'{"frames": [[[0]]]}')
        assert status == 400
        assert "'inputs'" in answer["message"]


def test_a_new_champion_moves_the_pin_reruns_scoring_only_and_is_served(
    scored: Path, copy_repo: Callable[[Path], Path], local_store: None
) -> None:
    """Promote a one-epoch model: the pin changes, only scoring reruns, with that version's maps,
    which a restarted server serves; a rollback brings back the first pin, maps and server."""
    repo = copy_repo(scored)
    first_pin, first_map = (repo / PIN).read_text(), np.load(repo / MAPS / "vid0001.npy")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"] |= {"epochs": 1, "seed": 1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    sh("dvc", "repro", "-q", "dvc.yaml", cwd=repo)
    other = Detector(repo / "models/model.pt").detect(batch_frames(repo, "vid0001"))
    assert not np.array_equal(other, first_map), "the one-epoch model maps alike: pick another"
    branch = "exp/one-epoch"
    env = {**os.environ, "BRANCHFLOW_BRANCH": branch}
    subprocess.run(["branchflow", "register"], cwd=repo, env=env, check=True, capture_output=True)
    model = branch_names(repo, branch).model
    sh("branchflow", "promote", f"models:/{model}@candidate", cwd=repo)
    sh("branchflow", "pin", "--out", PIN, cwd=repo)
    assert json.loads((repo / PIN).read_text())["version"] == "2"
    assert changed_stages(repo) == {f"{SCORING}:score", f"{SCORING}:summarize"}
    sh("dvc", "repro", "-q", SCORING, cwd=repo)
    assert np.array_equal(np.load(repo / MAPS / "vid0001.npy"), other)
    production = json.loads(first_pin)["name"]
    with serving(repo, production) as url:
        assert np.array_equal(served_map(url, batch_frames(repo, "vid0001")), other)
    sh("branchflow", "rollback", cwd=repo)
    sh("branchflow", "pin", "--out", PIN, cwd=repo)
    assert (repo / PIN).read_text() == first_pin
    sh("dvc", "repro", "-q", SCORING, cwd=repo)
    assert np.array_equal(np.load(repo / MAPS / "vid0001.npy"), first_map)
    with serving(repo, production) as url:
        assert np.array_equal(served_map(url, batch_frames(repo, "vid0001")), first_map)


def dev_step(name: str) -> str:
    """The command of the step called `name` in dev.yml's job for the scoring pipeline."""
    workflow = yaml.safe_load((ROOT / ".github/workflows/dev.yml").read_text())
    steps = workflow["jobs"]["scoring-full"]["steps"]
    return next(step["run"] for step in steps if step.get("name") == name)


def test_the_dev_build_scores_its_full_batch_by_one_parameter(
    scored: Path, copy_repo: Callable[[Path], Path], local_store: None
) -> None:
    """dev.yml's command that scores the full batch, on a committed batch at data/batches/full
    (here 5 videos of another seed): every video of that batch, and only those, is mapped and
    judged against its labels."""
    repo = copy_repo(scored)
    full = "data/batches/full"
    sh("python", "-m", "badpixels.synth", "--videos", "5", "--seed", "3", "--out", full, cwd=repo)
    sh("dvc", "add", "-q", full, cwd=repo)
    sh("git", "add", f"{full}.dvc", "data/batches/.gitignore", cwd=repo)
    sh("git", "commit", "-qm", "the full batch", cwd=repo)
    sh("bash", "-c", dev_step("Reproduce on the full data"), cwd=repo)
    summary = json.loads((repo / SUMMARY).read_text())
    videos = {path.stem for path in (repo / full / "videos").iterdir()}
    assert len(videos) == 5 and set(summary["videos"]) == videos
    assert {path.stem for path in (repo / MAPS).iterdir()} == videos
    assert yaml.safe_load((repo / "pipelines/scoring/params.yaml").read_text())["batch"] == full
    assert summary["agreement"]["f1"] >= 0.95


def score_error(repo: Path) -> str:
    """The stage's stderr, run by hand; it must fail with exit status 1."""
    done = subprocess.run(SCORE, cwd=repo, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    return done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "99"}, "cannot give models:/badpixels_production/99"),
        ({"sha256": "0" * 64}, "the pin says 000000000000...; not the pinned bytes"),
        ({"sha256": "abc"}, "needs name, version (a number) and sha256 (64 hex digits)"),
    ],
)
def test_a_bad_pin_fails_in_one_line(
    scored: Path, copy_repo: Callable[[Path], Path], local_store: None, change: dict, message: str
) -> None:
    repo = copy_repo(scored)
    pin = json.loads((repo / PIN).read_text())
    (repo / PIN).write_text(json.dumps(pin | change))
    stderr = score_error(repo)
    assert message in stderr
    assert stderr.count("\n") == 1 and stderr.startswith(f"error: {PIN}: ")
    assert np.array_equal(
        np.load(repo / MAPS / "vid0000.npy"), np.load(scored / MAPS / "vid0000.npy")
    )


def test_without_a_registry_the_stage_says_where_it_looked(
    scored: Path, copy_repo: Callable[[Path], Path], local_store: None
) -> None:
    repo = copy_repo(scored)
    (repo / "mlflow.db").unlink()
    stderr = score_error(repo)
    assert stderr == (
        f"error: {repo / 'mlflow.db'}: no local registry; set MLFLOW_TRACKING_URI to the "
        "registry, or run `branchflow register` and `branchflow promote` here first\n"
    )
    assert not (repo / "mlflow.db").exists()


def test_pin_writes_only_on_change_and_computes_a_missing_sha(
    scored: Path, copy_repo: Callable[[Path], Path], local_store: None
) -> None:
    """Re-pinning the same champion leaves the file alone; without the `model_sha256` tag the
    pin computes the same sha256 from the downloaded artifact."""
    repo = copy_repo(scored)
    pinned = json.loads((repo / PIN).read_text())
    before = (repo / PIN).stat().st_mtime_ns
    again = sh("branchflow", "pin", "--out", PIN, cwd=repo)
    assert "already pins" in again.stdout and (repo / PIN).stat().st_mtime_ns == before
    store = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(store, store)
    client.delete_model_version_tag(pinned["name"], pinned["version"], "model_sha256")
    sh("branchflow", "pin", "--out", "other.json", cwd=repo)
    assert json.loads((repo / "other.json").read_text()) == pinned


def test_the_committed_pin_names_the_committed_model() -> None:
    """The committed pin's sha256 is that of the model `dvc.lock` records, kept in the in-repo
    remote, so a fresh clone whose machine trains those bytes scores without re-pinning (one
    that trains others re-pins: `branchflow pin`)."""
    pin = json.loads((ROOT / PIN).read_text())
    train = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]["train"]
    (model,) = [out["md5"] for out in train["outs"] if out["path"] == "models/model.pt"]
    stored = ROOT / "data/remote/files/md5" / model[:2] / model[2:]
    sha = hashlib.sha256(stored.read_bytes()).hexdigest()
    assert pin == {"name": "badpixels_production", "version": "1", "sha256": sha}


def test_the_champion_keeps_the_per_unit_results_the_gate_pairs_with(
    scored: Path, copy_repo: Callable[[Path], Path], local_store: None
) -> None:
    """`register` logged reports/units.csv and `promote` copied it to production's run: the
    gate judges the branch against the champion by the paired interval (no change: the same
    model), not by the fixed threshold."""
    from branchflow.report.gate import run_gate

    verdict = run_gate(copy_repo(scored), None, env={})
    champion = verdict.intervals["champion"]["cnn.overall.f1"]
    assert (champion.change, champion.low, champion.high, champion.units) == (0.0, 0.0, 0.0, 16)
    assert any(
        "vs champion v1: " in c.text and "no detectable change" in c.text for c in verdict.checks
    )
