"""`submit`: what it sends (a dev build's full data), and against a workspace, through the real
`MLClient` over azure-core's transport answered in the process by `tests.azure_workspace` (no
Azure reached), what it creates, checks and follows."""

from __future__ import annotations

import dataclasses
import platform
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import MLClient

from branchflow.azureml import submit
from branchflow.azureml.plan import Verdict
from branchflow.azureml.sizes import DRIVER_FOR_CUDA, GPU_SIZES, is_cuda_package, minimum_driver
from branchflow.errors import BranchflowError
from tests.azure_workspace import (
    SCOPE,
    WORKSPACE_IDS,
    Credential,
    Workspace,
    cluster,
    past_job,
)
from tests.conftest import dvc_project, init_repo, sh
from tests.test_azureml import NODES, OUT, run_cli

REGION = {"Standard_DS3_v2": 0, "Standard_NC4as_T4_v3": 1, "Standard_NC24ads_A100_v4": 1}


@pytest.fixture(scope="module")
def submissions(
    project_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, submit.Submission]:
    """The example's two pipelines as `submit` would send them, from a copy of the committed
    project (`prepare` rebuilds the snapshots, which other workers' copies must not see)."""
    repo = tmp_path_factory.mktemp("submit") / "repo"
    shutil.copytree(project_repo, repo, symlinks=True)
    return {name: submit.prepare(repo, OUT, {}, name) for name in ("training", "scoring")}


def client(workspace: Workspace) -> MLClient:
    return MLClient(Credential(), *WORKSPACE_IDS, transport=workspace.transport())


def provision(workspace: Workspace, submission: submit.Submission, log=print) -> None:
    """What `submit` does to clusters: check them all, then create or update."""
    mlclient = client(workspace)
    submit.create_computes(mlclient, submit.check_computes(mlclient, submission), log)


def created(workspace: Workspace) -> dict[str, dict]:
    """The clusters the SDK asked the workspace to create or update: name -> its properties."""
    return {
        request.path.rsplit("/", 1)[1]: request.body["properties"]["properties"]
        for request in workspace.requests
        if request.method == "PUT" and "/computes/" in request.path
    }


def test_a_fresh_workspace_gets_only_the_clusters_each_pipeline_uses(submissions) -> None:
    workspace, log = Workspace(sizes=REGION), []
    provision(workspace, submissions["scoring"], log.append)
    # The CPU-only scoring pipeline creates no GPU cluster.
    scoring = created(workspace)
    assert list(scoring) == ["cpu-cluster"]
    assert scoring["cpu-cluster"]["vmSize"] == "Standard_DS3_v2"
    assert scoring["cpu-cluster"]["scaleSettings"]["minNodeCount"] == 0
    assert scoring["cpu-cluster"]["scaleSettings"]["maxNodeCount"] == 8
    workspace.requests.clear()
    provision(workspace, submissions["training"], log.append)
    training = created(workspace)
    assert list(training) == ["gpu-cluster"]  # the CPU cluster exists now, as configured
    assert training["gpu-cluster"]["vmSize"] == "Standard_NC4as_T4_v3"
    assert training["gpu-cluster"]["scaleSettings"]["maxNodeCount"] == 1
    assert "compute cpu-cluster exists as configured" in log


def test_each_pipeline_registers_the_environments_its_nodes_run_in_once(submissions) -> None:
    workspace, log = Workspace(sizes=REGION), []
    submit.register_environments(client(workspace), submissions["scoring"], log.append)
    # Scoring runs on CPUs only: its one environment has no CUDA and a dated base image.
    (scoring,) = workspace.environments.values()
    image = scoring["properties"]["image"]
    assert re.fullmatch(r"mcr\.microsoft\.com/azureml/[\w.-]+:\d{8}\.v\d+", image)
    assert "nvidia-" not in scoring["properties"]["condaFile"]
    assert "torch==2.11.0+cpu" in scoring["properties"]["condaFile"]
    submit.register_environments(client(workspace), submissions["training"], log.append)
    assert len(workspace.environments) == 2  # the GPU one added, the CPU one already there
    gpu = next(e for e in workspace.environments.values() if e is not scoring)
    assert "nvidia-cuda-runtime==" in gpu["properties"]["condaFile"]
    assert gpu["properties"]["image"] == image
    assert len([line for line in log if line.startswith("registering environment")]) == 2


def test_a_size_the_region_does_not_offer_stops_submit_before_it_creates_anything(
    submissions,
) -> None:
    workspace = Workspace(sizes={"Standard_DS3_v2": 0, "Standard_NC24ads_A100_v4": 1})
    with pytest.raises(BranchflowError) as error:
        provision(workspace, submissions["training"], print)
    assert str(error.value) == (
        "compute gpu-cluster: the workspace's region offers no Standard_NC4as_T4_v3 for Azure "
        "ML clusters (GPU sizes there: Standard_NC24ads_A100_v4); set "
        "[tool.branchflow.azureml.computes.gpu-cluster] size to one it offers"
    )
    assert created(workspace) == {}


def test_more_processes_per_node_than_the_size_has_gpus_is_refused(submissions) -> None:
    """Sizes outside branchflow's table are checked against the GPUs the region reports."""
    crowded = dataclasses.replace(submissions["training"], processes={"gpu-cluster": 2})
    workspace = Workspace(sizes=REGION)
    with pytest.raises(BranchflowError, match="starts 2 processes per machine, but "):
        provision(workspace, crowded, print)
    assert created(workspace) == {}


def test_an_existing_cluster_takes_new_scale_settings_and_refuses_a_new_size(
    submissions,
) -> None:
    workspace, log = Workspace(sizes=REGION), []
    workspace.computes["cpu-cluster"] = cluster("cpu-cluster", "STANDARD_DS3_V2", 4)
    provision(workspace, submissions["scoring"], log.append)
    assert "updating compute cpu-cluster: max_instances 4 -> 8" in log
    assert created(workspace)["cpu-cluster"]["scaleSettings"]["maxNodeCount"] == 8

    workspace = Workspace(sizes=REGION)
    workspace.computes["cpu-cluster"] = cluster("cpu-cluster", "Standard_D2s_v3", 8)
    with pytest.raises(BranchflowError) as error:
        provision(workspace, submissions["scoring"], print)
    assert str(error.value) == (
        "compute cpu-cluster exists with size Standard_D2s_v3, but "
        "[tool.branchflow.azureml.computes.cpu-cluster] says Standard_DS3_v2, and Azure cannot "
        "change a cluster's size: delete it (`az ml compute delete --name cpu-cluster`) and "
        "submit again, or set size = 'Standard_D2s_v3'"
    )
    assert created(workspace) == {}


@pytest.mark.parametrize(
    ("statuses", "message", "cancelled"),
    [
        (["Running", "Completed"], None, False),
        (["Running", "Paused"], "is Paused and will not finish by itself", False),
        (["Queued", "Unknown"], "is Unknown and will not finish by itself", False),
        (["Running", "Failed"], "ended Failed", False),
        (["Running"], "still Running after 0 s; cancelled it", True),
        # Each poll reads the job twice (its status, then its steps through run history).
        (["Running", "Running", 401], "the Azure credentials expired after", False),
        (["Running", "Running", 400], "following Azure ML job j1 failed", True),
        (["Running", "Running", "Ctrl-C"], "interrupted: cancelled Azure ML job j1", True),
    ],
)
def test_waiting_ends_on_every_terminal_or_stuck_state(
    monkeypatch: pytest.MonkeyPatch, statuses: list, message: str | None, cancelled: bool
) -> None:
    monkeypatch.setattr(submit, "POLL_SECONDS", 0)
    workspace, log = Workspace(sizes={}), []
    workspace.jobs["j1"] = list(statuses)
    timeout = 0 if statuses == ["Running"] else 60
    if message is None:
        submit._wait(client(workspace), "j1", timeout, "https://studio/j1", log.append)
    else:
        with pytest.raises(BranchflowError, match=message):
            submit._wait(client(workspace), "j1", timeout, "https://studio/j1", log.append)
    cancels = [r for r in workspace.requests if r.path == f"{SCOPE}/jobs/j1/cancel"]
    assert len(cancels) == int(cancelled)
    assert log[0] == f"j1: {statuses[0]}"  # the service's spelling, not the SDK's enum


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="the lock's CUDA build of torch is its Linux x86-64 wheel",
)
def test_gpu_nodes_torch_runs_on_every_known_size_and_cpu_nodes_carry_no_cuda(
    project_repo: Path,
) -> None:
    import torch

    folder = project_repo / OUT
    gpu = yaml.safe_load((folder / "conda.yml").read_text())["dependencies"][-1]["pip"]
    cpu = yaml.safe_load((folder / "conda-cpu.yml").read_text())["dependencies"][-1]["pip"]
    release = torch.__version__.split("+")[0]
    assert any(pin.startswith(f"torch=={release} ") for pin in gpu)  # the wheel tested here
    archs = torch._C._cuda_getArchFlags().split()  # from the wheel's own build
    for size, card in GPU_SIZES.items():
        assert f"sm_{card.capability}" in archs, (size, archs)
    assert "sm_70" not in archs  # the V100 of the retired NCv3 sizes, which compile refuses
    # The driver the GPU node checks for is the one this wheel's CUDA major needs.
    assert minimum_driver(gpu) == DRIVER_FOR_CUDA[int(torch.version.cuda.split(".")[0])]
    assert any(map(is_cuda_package, gpu))
    assert not any(map(is_cuda_package, cpu)), cpu
    assert cpu[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert any(pin.startswith(f"torch=={release}+cpu ") for pin in cpu)


@pytest.fixture(scope="module")
def two_data_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose stage reads `${data}`: the toy set committed, the full set beside it,
    both `dvc add`ed, compiled with the toy set."""
    repo = tmp_path_factory.mktemp("two-data")
    files = {
        "pyproject.toml": '[project]\nname = "two-data"\ndependencies = ["pyyaml"]\n',
        "params.yaml": "data: data/toy  # data/full in dev builds\n",
        "dvc.yaml": """
            stages:
              count:
                cmd: wc -l < ${data}/rows.txt > count.txt
                deps: ["${data}"]
                outs: [count.txt]
        """,
        ".dvcignore": "*.tmp\n",
        "data/toy/rows.txt": "a\n",
        "data/full/rows.txt": "a\nb\nc\n",
    }
    dvc_project(repo, files)
    sh("dvc", "add", "-q", "data/toy", "data/full", cwd=repo)
    assert run_cli(repo, "azureml", "compile").exit_code == 0
    return init_repo(repo)


def test_a_dev_build_binds_the_full_data_it_sets(two_data_repo: Path, copy_repo) -> None:
    repo = copy_repo(two_data_repo)
    result = run_cli(repo, "azureml", "submit", "--dry-run", "-S", "data=data/full")
    assert result.exit_code == 0, result.stderr
    full = yaml.safe_load((repo / "data/full.dvc").read_text())["outs"][0]["md5"][:-4]
    toy = yaml.safe_load((repo / "data/toy.dvc").read_text())["outs"][0]["md5"][:-4]
    job = yaml.safe_load(result.stdout)
    assert job["inputs"] == {
        "dvc_data_full": {"type": "uri_folder", "path": f"azureml:two-data-data-full:{full}"}
    }
    assert toy not in result.stdout
    assert "would upload full (data/full.dvc) and register data asset" in result.stderr
    # As after `dvc exp run -S`: the params file says what ran, and the compiled files match it.
    assert (repo / "params.yaml").read_text().startswith("data: data/full")
    assert run_cli(repo, "azureml", "compile", "--check").exit_code == 0


def test_a_bad_param_value_stops_submit_in_one_line(two_data_repo: Path, copy_repo) -> None:
    repo = copy_repo(two_data_repo)
    before = (repo / "params.yaml").read_text()
    result = run_cli(repo, "azureml", "submit", "--dry-run", "-S", "data")
    assert result.exit_code == 3
    assert result.stderr == (
        "error: -S data: Invalid `--set-param` value; give [FILE:]KEY=VALUE, as "
        "`dvc exp run -S` takes it\n"
    )
    assert (repo / "params.yaml").read_text() == before


def test_submit_uploads_exactly_the_files_dvc_hashed(two_data_repo: Path, copy_repo) -> None:
    repo = copy_repo(two_data_repo)
    (repo / "data/full/scratch.tmp").write_text("left by an editor, .dvcignored\n")
    upload = submit.DataUpload(
        asset=repo / OUT / "data/two-data-data-full.yml",
        local=repo / "data/full",
        dvcfile="data/full.dvc",
        prefix="dvc/md5",
    )
    assert submit.workspace_files(repo, upload) == [repo / "data/full/rows.txt"]
    (repo / "data/full/rows.txt").write_text("edited after dvc add\n")
    with pytest.raises(BranchflowError) as error:
        submit.workspace_files(repo, upload)
    assert str(error.value) == (
        "data/full differs from data/full.dvc; run `dvc checkout data/full.dvc` (or `dvc pull "
        "data/full.dvc`) before submitting"
    )


def planned(repo: Path, last: submit.Submission | None) -> list[str]:
    """`azureml plan` of `repo`'s training pipeline against a workspace whose newest completed
    job of the branch ran `last` (an older one and another branch's also listed)."""
    now = submit.prepare(repo, OUT, {}, "training")
    workspace = Workspace(sizes=REGION)
    if last is not None:
        recorded = yaml.safe_load(last.text)["tags"]
        workspace.history = [
            past_job(
                "older",
                now.experiment,
                "Completed",
                {**recorded, "branchflow.node.train": "x"},
                "2026-12-01T09:00:00Z",
            ),
            past_job("newest", now.experiment, "Completed", recorded, "2026-12-01T10:00:00Z"),
            past_job(
                "failed", now.experiment, "Failed", {"branchflow.plan": "1"}, "2026-12-01T11:00:00Z"
            ),
            past_job(
                "other",
                "another_branch",
                "Completed",
                {"branchflow.plan": "1"},
                "2026-12-01T12:00:00Z",
            ),
        ]
    verdicts = submit.plan_submission(now, WORKSPACE_IDS, client(workspace))
    listed = [r for r in workspace.requests if r.path == f"{SCOPE}/jobs"]
    assert [r.query.get("tag") for r in listed] == [["branchflow.plan"]]
    return [verdict.line() for verdict in verdicts]


def test_plan_names_what_reruns_on_this_repository_and_why(project_repo: Path, copy_repo) -> None:
    repo = copy_repo(project_repo)
    before = submit.prepare(repo, OUT, {}, "training")
    stages = NODES
    assert planned(repo, None) == [
        f"rerun  {node}: no completed run of this branch's pipeline to reuse" for node in stages
    ]
    assert planned(repo, before) == [f"reuse  {node}: unchanged" for node in stages]

    train = repo / "src/badpixels/train.py"
    train.write_text(train.read_text() + "\n# a change to training\n")
    assert run_cli(repo, "azureml", "compile").exit_code == 0  # new digests, as CI demands
    changed = "its DVC stage changed (cmd, params, deps or data)"
    assert planned(repo, before) == [
        *(f"reuse  {node}: unchanged" for node in NODES[:-2]),
        f"rerun  train: {changed}; its code changed",
        f"rerun  evaluate: {changed}",  # its digest holds train's, and it reads train's model
    ]

    sh("git", "checkout", "--", "src/badpixels/train.py", cwd=repo)
    # A lock that pins another pyyaml (its block rewritten as `uv lock` would, hashes aside).
    lock = repo / "uv.lock"
    text = lock.read_text()
    block = re.search(
        r'\[\[package\]\]\nname = "pyyaml"\nversion = "([^"]+)".*?(?=\[\[package)', text, re.S
    )
    assert block is not None
    lock.write_text(text.replace(block[0], block[0].replace(block[1], "6.0.0")))
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 0, result.stderr
    assert "  - pyyaml==6.0.0 ;" in (repo / OUT / "conda.yml").read_text()
    assert planned(repo, before) == [
        f"rerun  {node}: its environment changed (the lock or the base image)" for node in stages
    ]


@pytest.mark.parametrize(
    ("reused", "message"),
    [
        ({"train": False, "evaluate": False, "frames": True}, None),
        ({"train": True, "evaluate": False, "frames": True}, "train was reused, planned rerun"),
        ({"train": False, "evaluate": False, "frames": False}, "frames was rerun, planned reused"),
    ],
)
def test_after_waiting_submit_refuses_a_reuse_that_differs_from_the_plan(
    reused: dict[str, bool], message: str | None
) -> None:
    verdicts = [
        Verdict("frames", False, "unchanged"),
        Verdict("train", True, "its code changed"),
        Verdict("evaluate", True, "upstream train reruns"),
    ]
    workspace, log = Workspace(sizes={}), []
    workspace.jobs["j1"], workspace.children["j1"] = ["Completed"], reused
    if message is None:
        submit.check_reuse(client(workspace), "j1", verdicts, log.append)
        assert log == ["j1: Azure ML reused and reran the nodes as planned"]
    else:
        with pytest.raises(BranchflowError, match=message):
            submit.check_reuse(client(workspace), "j1", verdicts, log.append)


def test_the_reuse_flag_is_the_one_azure_ai_ml_reads() -> None:
    from azure.ai.ml.constants._job.pipeline import PipelineConstants

    assert submit.REUSED == (
        PipelineConstants.REUSED_FLAG_FIELD,
        PipelineConstants.REUSED_FLAG_TRUE,
    )
