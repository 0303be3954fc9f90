"""Azure ML nodes: per-stage code snapshots under the SDK's own hashing, the wrapper's path
safety, `wdir` and `dvc.yaml` in subfolders, a foreign project's environment, computes, and
the data upload against a real Azure Blob endpoint (Azurite)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import load_job
from azure.ai.ml._utils._asset_utils import get_content_hash, get_ignore_file
from azure.storage.blob import ContainerClient

from branchflow.azureml import wrapper
from branchflow.azureml.upload import upload_source
from tests.conftest import dvc_project, init_repo, sh
from tests.test_azureml import OUT, PARENT, REFERENCE, md5_tree, run_cli
from tests.test_remote import azurite, connection_string  # noqa: F401 (a fixture)

WRAPPER = Path(wrapper.__file__)


def compile_repo(repo: Path) -> None:
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 0, result.output


def code_hashes(repo: Path) -> dict[str, str]:
    """Each component's code version as azure-ai-ml computes it before an upload."""
    compile_repo(repo)
    folder = repo / OUT / "snapshots"
    return {p.name: get_content_hash(p, get_ignore_file(p)) for p in sorted(folder.iterdir())}


def reuse_inputs(repo: Path) -> dict[str, object]:
    jobs = yaml.safe_load((repo / OUT / "pipeline-training.yml").read_text())["jobs"]
    return {node: job["inputs"] for node, job in jobs.items()}


def changed(before: dict[str, object], after: dict[str, object]) -> set[str]:
    return {key for key in before if before[key] != after[key]}


def test_each_node_uploads_only_what_its_stage_reads(project_repo: Path, copy_repo) -> None:
    repo = copy_repo(project_repo)
    hashes, inputs = code_hashes(repo), reuse_inputs(repo)

    train = repo / "src/badpixels/train.py"
    train.write_text(f"{train.read_text()}# edited\n")
    after = code_hashes(repo)
    assert changed(hashes, after) == {"train"}
    hashes, inputs = after, reuse_inputs(repo)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    after = code_hashes(repo)
    assert changed(hashes, after) == {"train"}  # its params.yaml holds the train section only
    assert changed(inputs, reuse_inputs(repo)) == {"train", "evaluate"}
    snapshot_params = yaml.safe_load((repo / OUT / "snapshots/train/params.yaml").read_text())
    assert snapshot_params == {"train": params["train"]}
    hashes, inputs = after, reuse_inputs(repo)

    for path in ["tests/test_gate.py", "docs/ci.md", ".github/workflows/pr.yml"]:
        (repo / path).write_text(f"{(repo / path).read_text()}\n# edited\n")
    (repo / "mlflow.db").write_bytes(b"a local register")  # what `branchflow register` writes
    (repo / "mlartifacts/1").mkdir(parents=True)
    (repo / "mlartifacts/1/model.pt").write_bytes(b"weights")
    (repo / "src/badpixels/__pycache__").mkdir()
    (repo / "src/badpixels/__pycache__/train.cpython-311.pyc").write_bytes(b"bytecode")
    assert code_hashes(repo) == hashes
    assert reuse_inputs(repo) == inputs


def run_wrapper(snapshot: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WRAPPER), "--stage", "s", *args],
        cwd=snapshot,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--out", "."),
        ("--out", "../outside"),
        ("--out", "/tmp/outside"),
        ("--out", "escape/victim.txt"),  # through a symbolic link out of the snapshot
        ("--in", "escape/victim.txt"),
        ("--wdir", "escape"),
    ],
)
def test_the_wrapper_touches_nothing_outside_its_snapshot(
    tmp_path: Path, flag: str, value: str
) -> None:
    snapshot, outside, mount = tmp_path / "snapshot", tmp_path / "outside", tmp_path / "mount"
    for folder in (snapshot, outside, mount):
        folder.mkdir()
    (snapshot / "kept.txt").write_text("snapshot file\n")
    (outside / "victim.txt").write_text("not the stage's\n")
    (mount / "victim.txt").write_text("input\n")
    (snapshot / "escape").symlink_to(outside, target_is_directory=True)
    argument = [flag, value] if flag == "--wdir" else [flag, f"{value}={mount}"]
    result = run_wrapper(snapshot, *argument, "--", "touch written-by-stage")
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert (outside / "victim.txt").read_text() == "not the stage's\n"
    assert (snapshot / "kept.txt").read_text() == "snapshot file\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert not (snapshot / "written-by-stage").exists()  # refused before the command ran


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("echo 580.65.06", None),
        ("echo 570.124.06", "the node's NVIDIA driver is 570.124.06, older than the 580 branch"),
        ("exit 9", "this node runs on a GPU size, but nvidia-smi shows no GPU"),
    ],
)
def test_a_gpu_node_checks_its_driver_before_the_stage_runs(
    tmp_path: Path, answer: str, error: str | None
) -> None:
    """`nvidia-smi` as the node's host gives it (a stand-in here: this machine has no GPU)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(f"#!/bin/sh\n{answer}\n")
    (tools / "nvidia-smi").chmod(0o755)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    result = run_wrapper(
        snapshot,
        "--",
        "touch ran",
        BRANCHFLOW_GPU_DRIVER="580",
        PATH=f"{tools}{os.pathsep}{os.environ['PATH']}",
    )
    if error is None:
        assert result.returncode == 0, result.stderr
        assert (snapshot / "ran").exists()
    else:
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1].startswith(f"error: {error}")
        assert not (snapshot / "ran").exists()


def test_the_stage_talks_to_the_configured_mlflow_not_the_workspaces(tmp_path: Path) -> None:
    """Azure ML sets MLFLOW_TRACKING_URI to its workspace (`azureml://`); with
    `mlflow_tracking_uri` configured, the stage sees the team's server instead."""
    result = run_wrapper(
        tmp_path,
        "--",
        'echo "$MLFLOW_TRACKING_URI $MLFLOW_REGISTRY_URI" > seen.txt',
        MLFLOW_TRACKING_URI="azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s",
        BRANCHFLOW_MLFLOW_TRACKING_URI="https://mlflow.team.example",
    )
    assert result.returncode == 0, result.stderr
    seen = (tmp_path / "seen.txt").read_text()
    assert seen == "https://mlflow.team.example https://mlflow.team.example\n"


def test_shard_nodes_write_their_parts_and_a_reader_sees_them_as_one_folder(
    tmp_path: Path,
) -> None:
    """Each shard node writes its part to its own output folder; a node reading the stage's
    output gets every shard's folder and sees one, as under `dvc repro`."""
    stage = (
        "python3 -c \"import os, pathlib; i = os.environ['BRANCHFLOW_SHARD_INDEX']; "
        "n = os.environ['BRANCHFLOW_SHARD_COUNT']; out = pathlib.Path('out'); out.mkdir(); "
        "(out / 'parts').mkdir(); (out / 'parts' / f'{i}-of-{n}').write_text(i); "
        "(out / 'shared').write_text('same')\""
    )
    mounts = []
    for index in range(3):
        snapshot, mount = tmp_path / f"node{index}", tmp_path / f"mount{index}"
        snapshot.mkdir()
        mount.mkdir()
        result = run_wrapper(
            snapshot, "--shard", f"{index}/3", "--out", f"out={mount}", "--", stage
        )
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in (mount / "out" / "parts").iterdir()) == [f"{index}-of-3"]
        mounts.append(mount)
    reader = tmp_path / "reader"
    reader.mkdir()
    listing = "find out -type f -o -type l | sort > seen.txt; cat out/parts/* > joined.txt"
    ins = [word for mount in mounts for word in ("--in", f"out={mount}")]
    result = run_wrapper(reader, *ins, "--", listing)
    assert result.returncode == 0, result.stderr
    assert (reader / "seen.txt").read_text().split() == [
        "out/parts/0-of-3",
        "out/parts/1-of-3",
        "out/parts/2-of-3",
        "out/shared",
    ]
    assert (reader / "joined.txt").read_text() == "012"
    assert all((mount / "out/shared").read_text() == "same" for mount in mounts)

    result = run_wrapper(tmp_path, "--shard", "3/3", "--", "true")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: --shard 3/3: expected I/N with 0 <= I < N"


def make_subfolder_project(repo: Path) -> Path:
    """Two pipelines in subfolders; one stage runs in `wdir: ../..`, one reads a second
    params file and runs its code from src/ through PYTHONPATH (as `src.*` layouts do), writing
    into a folder only its committed .gitignore keeps."""
    files = {
        "pyproject.toml": '[project]\nname = "two-pipelines"\ndependencies = ["pyyaml"]\n\n'
        '[tool.branchflow.azureml]\npythonpath = ["src"]\n',
        "src/twopipes/__init__.py": "",
        "src/twopipes/scale.py": """
            import sys, yaml
            factor = yaml.safe_load(open("params.yaml"))["prepare"]["factor"]
            extra = yaml.safe_load(open("extra.yaml"))["offset"]
            numbers = [int(n) * factor + extra for n in open(sys.argv[1]).read().split()]
            open(sys.argv[2], "w").write(" ".join(map(str, numbers)) + "\\n")
        """,
        "pipelines/train/raw.txt": "1 2 3\n",
        # DVC's own .gitignore keeps out/ in every clone, but in no snapshot: the stage's code
        # writes into it without creating it.
        "pipelines/train/out/.gitignore": "/prepared.txt\n",
        "pipelines/train/params.yaml": "prepare:\n  factor: 3\n  unused: 1\n",
        "pipelines/train/extra.yaml": "offset: 1\nother: 2\n",
        "pipelines/train/dvc.yaml": """
            stages:
              prepare:
                cmd: python -m twopipes.scale raw.txt out/prepared.txt
                deps: [raw.txt, ../../src/twopipes/__init__.py, ../../src/twopipes/scale.py]
                params: [prepare.factor, {extra.yaml: [offset]}]
                outs: [out/prepared.txt]
        """,
        "pipelines/score/dvc.yaml": """
            stages:
              score:
                wdir: ../..
                cmd: tr ' ' '\\n' < pipelines/train/out/prepared.txt | sort -rn > scores.txt
                deps: [pipelines/train/out/prepared.txt]
                outs: [scores.txt]
        """,
    }
    return init_repo(dvc_project(repo, files))


def test_subfolder_pipelines_and_wdir_run_on_nodes_as_under_dvc(tmp_path: Path) -> None:
    repo = make_subfolder_project(tmp_path / "repo")
    compile_repo(repo)
    # A job per dvc.yaml, holding its stages and those upstream of them.
    assert sorted(p.name for p in (repo / OUT).glob("pipeline-*.yml")) == [
        "pipeline-score.yml",
        "pipeline-train.yml",
    ]
    train = yaml.safe_load((repo / OUT / "pipeline-train.yml").read_text())
    assert list(train["jobs"]) == ["pipelines_train_prepare"]
    pipeline = yaml.safe_load((repo / OUT / "pipeline-score.yml").read_text())
    assert list(pipeline["jobs"]) == ["pipelines_train_prepare", "pipelines_score_score"]
    assert load_job(source=repo / OUT / "pipeline-score.yml")._validate().passed
    snapshot = repo / OUT / "snapshots/pipelines_train_prepare"
    assert yaml.safe_load((snapshot / "pipelines/train/params.yaml").read_text()) == {
        "prepare": {"factor": 3}
    }
    assert yaml.safe_load((snapshot / "pipelines/train/extra.yaml").read_text()) == {"offset": 1}

    outputs = run_nodes(repo, pipeline, tmp_path)
    targets = ["pipelines/train/dvc.yaml", "pipelines/score/dvc.yaml"]
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    subprocess.run(["dvc", "repro", "-q", *targets], cwd=repo, env=env, check=True)
    assert (repo / "scores.txt").read_text() == "10\n7\n4\n"
    for path, produced in outputs.items():
        assert md5_tree(produced) == md5_tree(repo / path), path


def run_nodes(repo: Path, pipeline: dict, tmp_path: Path) -> dict[str, Path]:
    """Run every node's command as Azure ML would: from a copy of its snapshot, inputs and
    outputs in separate folders, the job's environment variables set, with a Python that has
    not installed the project. Returns each DVC output path's produced copy."""
    folders: dict[str, Path] = {}
    produced: dict[str, Path] = {}
    for node, job in pipeline["jobs"].items():
        component = yaml.safe_load((repo / OUT / job["component"]).read_text())
        values = {}
        for name, value in job["inputs"].items():
            bound = PARENT.fullmatch(str(value))
            values[f"inputs.{name}"] = str(folders[bound[1]]) if bound else str(value)
        for name, spec in component["outputs"].items():
            folder = tmp_path / "outputs" / node / name
            folder.mkdir(parents=True)
            folders[f"jobs.{node}.outputs.{name}"] = values[f"outputs.{name}"] = folder
            produced[spec["description"]] = folder / Path(spec["description"]).name
        code = tmp_path / "nodes" / node
        shutil.copytree(repo / OUT / "components" / component["code"], code)
        command = REFERENCE.sub(lambda m, v=values: str(v[m[1]]), component["command"])
        env = {**os.environ, **job.get("environment_variables", {})}
        result = subprocess.run(
            ["bash", "-c", command], cwd=code, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    return produced


def test_a_foreign_projects_environment_holds_what_its_nodes_import(tmp_path: Path) -> None:
    repo = make_subfolder_project(tmp_path / "repo")
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "two-pipelines"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["pyyaml>=6"]\n'
    )
    sh("uv", "lock", "-q", cwd=repo)
    compile_repo(repo)
    conda = yaml.safe_load((repo / OUT / "conda.yml").read_text())
    pip = conda["dependencies"][-1]["pip"]
    assert any(line.startswith("pyyaml==") for line in pip), pip
    assert not any(line.startswith("branchflow") for line in pip)  # the wrapper travels as code
    result = run_cli(repo, "check")
    assert result.exit_code == 0, result.output


def test_an_environment_that_would_install_nothing_is_an_error(tmp_path: Path) -> None:
    repo = make_subfolder_project(tmp_path / "repo")
    (repo / "pyproject.toml").write_text('[project]\nname = "two-pipelines"\n')
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 3
    assert "the Azure ML environment would install nothing" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_cluster_too_small_for_a_distributed_stage_is_an_error(tmp_path: Path) -> None:
    """A distributed stage takes all its nodes at once; shards queue for a free node."""
    repo = make_subfolder_project(tmp_path / "repo")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "two-pipelines"\ndependencies = ["pyyaml"]\n\n'
        '[tool.branchflow.azureml.computes.cpu-cluster]\nsize = "Standard_DS3_v2"\n'
        'max_instances = 2\n\n[tool.branchflow.azureml.stages."pipelines/train/dvc.yaml:prepare"]\n'
        'instance_count = 3\ndistribution = "pytorch"\n'
    )
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 3
    assert result.stderr == (
        "error: [tool.branchflow.azureml.computes.cpu-cluster] max_instances = 2, but node "
        "pipelines_train_prepare asks for instance_count = 3; raise max_instances\n"
    )
    text = (repo / "pyproject.toml").read_text()
    (repo / "pyproject.toml").write_text(text.replace('distribution = "pytorch"\n', ""))
    compile_repo(repo)  # three shard nodes on a cluster of two: they take turns


@pytest.mark.parametrize(
    ("compute", "stage", "message"),
    [
        (
            'size = "Standard_NC6s_v3"',
            "",
            "[tool.branchflow.azureml.computes.gpu] size = 'Standard_NC6s_v3': Azure retired it "
            "on 2025-09-30; choose a current size, e.g. Standard_NC4as_T4_v3 (1 T4) or "
            "Standard_NC24ads_A100_v4 (1 A100)",
        ),
        (
            'size = "Standard_NC4as_T4_v3"',
            'distribution = "pytorch"\nprocess_count_per_instance = 2',
            "[tool.branchflow.azureml.stages] pipelines_train_prepare asks for "
            "process_count_per_instance = 2, but Standard_NC4as_T4_v3 has 1 GPU(s) per node; "
            "each process takes one GPU: set it to 1 or drop it (one per GPU)",
        ),
    ],
)
def test_a_retired_size_or_more_processes_than_gpus_is_an_error(
    tmp_path: Path, compute: str, stage: str, message: str
) -> None:
    repo = make_subfolder_project(tmp_path / "repo")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "two-pipelines"\ndependencies = ["pyyaml"]\n\n'
        f"[tool.branchflow.azureml.computes.gpu]\n{compute}\n\n"
        '[tool.branchflow.azureml.stages."pipelines/train/dvc.yaml:prepare"]\n'
        f'compute = "gpu"\n{stage}\n'
    )
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 3
    assert result.stderr == f"error: {message}\n"


def test_a_stage_named_like_anothers_shard_is_an_error(tmp_path: Path) -> None:
    repo = dvc_project(
        tmp_path / "repo",
        {
            "pyproject.toml": '[project]\nname = "shards"\ndependencies = ["pyyaml"]\n\n'
            "[tool.branchflow.azureml.stages.split]\ninstance_count = 2\n",
            "dvc.yaml": """
                stages:
                  split: {cmd: echo a > a.txt, outs: [a.txt]}
                  split_shard1: {cmd: echo b > b.txt, outs: [b.txt]}
            """,
        },
    )
    init_repo(repo)
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 3
    assert result.stderr == (
        "error: stage split's shards would be named like stage split_shard1; rename the stage\n"
    )


def test_a_gpu_size_gets_one_process_per_gpu_and_nodes_the_configured_mlflow(
    tmp_path: Path,
) -> None:
    repo = make_subfolder_project(tmp_path / "repo")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "two-pipelines"\ndependencies = ["pyyaml"]\n\n'
        '[tool.branchflow.azureml]\nmlflow_tracking_uri = "https://mlflow.team.example"\n\n'
        '[tool.branchflow.azureml.computes.gpu]\nsize = "Standard_NC64as_T4_v3"\n\n'
        '[tool.branchflow.azureml.stages."pipelines/train/dvc.yaml:prepare"]\n'
        'compute = "gpu"\ndistribution = "pytorch"\n'
    )
    compile_repo(repo)
    job = load_job(source=repo / OUT / "pipeline-train.yml")
    node = job.jobs["pipelines_train_prepare"]
    assert node.distribution.process_count_per_instance == 4
    assert node.environment_variables == {
        "BRANCHFLOW_MLFLOW_TRACKING_URI": "https://mlflow.team.example"
    }


def test_submit_dry_run_names_every_create(project_repo: Path, copy_repo) -> None:
    repo = copy_repo(project_repo)
    result = run_cli(repo, "azureml", "submit", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "would create compute cpu-cluster if missing",
        "would create compute gpu-cluster if missing",
        "would upload toy (data.dvc) and register data asset badpixels-data-raw-toy if missing",
    ]
    # The scoring pipeline runs on CPUs only: a fresh workspace gets no GPU cluster for it.
    result = run_cli(repo, "azureml", "submit", "--dry-run", "--pipeline", "scoring")
    assert result.exit_code == 0, result.stderr
    assert "would create compute cpu-cluster if missing" in result.stderr.splitlines()
    assert "gpu-cluster" not in result.stderr


def test_a_data_source_uploads_once(azurite: int, tmp_path: Path) -> None:  # noqa: F811
    source = tmp_path / "toy"
    (source / "videos").mkdir(parents=True)
    for index in range(3):
        (source / "videos" / f"v{index}.mp4").write_bytes(os.urandom(2048))
    (source / "labels.csv").write_text("video,y,x,kind\n")
    container = ContainerClient.from_connection_string(connection_string(azurite), "branchflow")
    prefix = "badpixels/dvc/0123abcd"

    first = upload_source(container, source, prefix)
    assert (first.sent, first.kept) == (4, 0)
    blobs = {b.name for b in container.list_blobs(name_starts_with=prefix)}
    assert blobs == {
        f"{prefix}/toy/{p.relative_to(source).as_posix()}" for p in source.rglob("*") if p.is_file()
    }
    for name in blobs:
        local = source / name.removeprefix(f"{prefix}/toy/")
        assert container.download_blob(name).readall() == local.read_bytes()
        md5 = container.get_blob_client(name).get_blob_properties().content_settings.content_md5
        assert bytes(md5) == hashlib.md5(local.read_bytes()).digest()

    second = upload_source(container, source, prefix)
    assert (second.sent, second.kept) == (0, 4)
    (source / "labels.csv").write_text("video,y,x,kind\nv0,1,2,hot\n")  # an interrupted upload
    third = upload_source(container, source, prefix)
    assert (third.sent, third.kept) == (1, 3)
