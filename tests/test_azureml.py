"""Azure ML: the compiled YAML, its offline validation, the stage wrapper, reuse digests,
`submit --dry-run`, and distributed training. No workspace and no credentials anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import load_component, load_compute, load_data, load_environment, load_job
from azure.ai.ml.entities import CommandComponent, PipelineJob
from click.testing import CliRunner

from branchflow.azureml.validate import check_pipeline, validate
from branchflow.cli import main
from branchflow.errors import BranchflowError
from branchflow.settings import load_settings
from branchflow.workspace.context import resolve_context
from branchflow.workspace.dag import read_dag
from branchflow.workspace.naming import names_for
from branchflow.workspace.pipelines import data_sources, find_pipeline
from tests.conftest import built_repo, hide_ci_variables, init_repo, sh

OUT = "pipelines/azureml"
STAGES = ["validate", "frames", "features", "train", "evaluate"]
# The training pipeline's nodes: frames and features run as 4 and 8 sibling shards.
NODES = [
    "validate",
    *(f"frames_shard{i}" for i in range(4)),
    *(f"features_shard{i}" for i in range(8)),
    "train",
    "evaluate",
]
REFERENCE = re.compile(r"\$\{\{(\w+\.\w+)\}\}")
PARENT = re.compile(r"\$\{\{parent\.(.+)\}\}")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No workspace, CI or branch variables from whoever runs the tests."""
    hide_ci_variables(monkeypatch, "AZURE")


@pytest.fixture(scope="module")
def compiled(project_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project after `branchflow azureml compile`. Copy it before changing it."""

    def make(repo: Path) -> None:
        shutil.copytree(project_repo, repo, symlinks=True)
        result = run_cli(repo, "azureml", "compile")
        assert result.exit_code == 0, result.output

    return built_repo(tmp_path_factory, "compiled", make)


def run_cli(repo: Path, *args: str, **env: str):
    """`branchflow ARGS` in `repo`; stdout and stderr kept apart."""
    cwd = Path.cwd()
    os.chdir(repo)
    try:
        return CliRunner().invoke(main, list(args), env=env)
    finally:
        os.chdir(cwd)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def md5_tree(path: Path) -> dict[str, str]:
    """The md5 of a file, or of every file under a folder by relative path."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {f.relative_to(path).as_posix(): md5(f) for f in files}


def test_every_generated_file_loads_and_validates_offline(compiled: Path) -> None:
    folder = compiled / OUT
    environments = {
        name: load_environment(source=folder / f"environment{name}.yml") for name in ("", "-cpu")
    }
    for stage in STAGES:
        component = load_component(source=folder / "components" / f"{stage}.yml")
        assert isinstance(component, CommandComponent)
        assert component._validate().passed
        assert component.inputs["dvc_stage_hash"].type == "string"
        assert component.command.startswith("python branchflow_wrapper.py")
        code = (folder / "components" / component.code).resolve()
        assert code == (folder / "snapshots" / stage).resolve()
        assert (code / "branchflow_wrapper.py").is_file()
        # The GPU node gets the CUDA environment, every node on the CPU cluster the other.
        environment = environments["" if stage == "train" else "-cpu"]
        assert component.environment == f"{environment.name}:{environment.version}"
    for environment in environments.values():  # a dated base image, the same everywhere
        assert re.fullmatch(r"mcr\.microsoft\.com/azureml/[\w.-]+:\d{8}\.v\d+", environment.image)
    job = load_job(source=folder / "pipeline-training.yml")
    assert isinstance(job, PipelineJob)
    assert job._validate().passed
    assert list(job.jobs) == NODES
    assert job.jobs["train"].compute == "gpu-cluster"
    # Standard_NC4as_T4_v3 has one GPU: one process per node, not two fighting over cuda:0.
    assert job.jobs["train"].distribution.process_count_per_instance == 1
    # The GPU node checks its driver against the locked CUDA 13 runtime; CPU nodes do not.
    assert job.jobs["train"].environment_variables["BRANCHFLOW_GPU_DRIVER"] == "580"
    assert "BRANCHFLOW_GPU_DRIVER" not in job.jobs["validate"].environment_variables
    assert job.jobs["frames_shard0"].compute is None  # the default: settings.default_compute
    md5 = yaml.safe_load((compiled / "data.dvc").read_text())["outs"][0]["md5"][:-4]
    assert (
        job.inputs["dvc_data_raw_toy"].path == f"badpixels-data-raw-toy:{md5}"
    )  # SDK drops azureml:
    asset = load_data(source=folder / "data" / "badpixels-data-raw-toy.yml")
    assert (asset.name, asset.version) == ("badpixels-data-raw-toy", md5)
    assert asset.path == f"azureml://datastores/workspaceblobstore/paths/badpixels/dvc/{md5}/"
    clusters = {p.stem: load_compute(source=p) for p in (folder / "computes").glob("*.yml")}
    assert {name: (c.min_instances, c.max_instances) for name, c in clusters.items()} == {
        "cpu-cluster": (0, 8),
        "gpu-cluster": (0, 1),
    }
    # Each shard is a node of its own, on one machine, told which shard it is by literals, so
    # Azure ML reuses the shards that succeeded when a resubmit follows a failed one.
    jobs = yaml.safe_load((folder / "pipeline-training.yml").read_text())["jobs"]
    for index in range(8):
        shard = jobs[f"features_shard{index}"]
        assert (shard["inputs"]["shard_index"], shard["inputs"]["shard_count"]) == (index, 8)
        assert "resources" not in shard and "distribution" not in shard
    command = load_component(source=folder / "components/features.yml").command
    assert "--shard ${{inputs.shard_index}}/${{inputs.shard_count}}" in command
    binding = "${{parent.jobs.train.outputs.out_models_model_pt}}"
    assert jobs["evaluate"]["inputs"]["in_models_model_pt"] == binding
    # A stage reading a sharded output binds every shard's, and the wrapper links them as one.
    assert [jobs["train"]["inputs"][f"in_data_processed_features_{i}"] for i in range(8)] == [
        f"${{{{parent.jobs.features_shard{i}.outputs.out_data_processed_features}}}}"
        for i in range(8)
    ]
    assert job.settings.continue_on_step_failure is True
    # Nothing branch- or commit-dependent is committed: submit adds it.
    commit = sh("git", "rev-parse", "HEAD", cwd=compiled).stdout.strip()
    for path in folder.rglob("*.yml"):
        text = path.read_text()
        assert commit not in text
        assert not re.search(r"\b(experiment_name|branch|commit)\b", text)


def test_a_broken_mapping_fails_validation(compiled: Path, copy_repo) -> None:
    repo = copy_repo(compiled)
    train = repo / OUT / "components" / "train.yml"
    original = train.read_text()
    train.write_text(original.replace("type: uri_folder", "type: uri_foldr", 1))
    dag = read_dag(repo)
    with pytest.raises(BranchflowError, match="uri_foldr"):
        validate(repo, OUT, dag)
    train.write_text(original)

    # A binding to an output that does not exist passes the SDK; our own check catches it.
    pipeline = repo / OUT / "pipeline-training.yml"
    broken = pipeline.read_text().replace("train.outputs.out_models_model_pt", "train.outputs.oops")
    pipeline.write_text(broken)
    assert load_job(source=pipeline)._validate().passed
    with pytest.raises(BranchflowError, match="node train has no output oops"):
        validate(repo, OUT, dag)

    document = yaml.safe_load(broken)
    components = {
        f"./components/{p.name}": yaml.safe_load(p.read_text())
        for p in (repo / OUT / "components").glob("*.yml")
    }
    document["jobs"]["train"]["inputs"]["dvc_stage_hash"] = 12
    document["jobs"]["train"]["inputs"]["epochs"] = 3
    document["jobs"]["features_shard0"]["inputs"]["in_data_interim_frames_0"] = (
        "${{parent.jobs.evaluate.outputs.out_reports_plots}}"  # a cycle: evaluate runs later
    )
    assert check_pipeline(document, components) == [
        "jobs.features_shard0.inputs.in_data_interim_frames_0: no node evaluate runs before "
        "this one",
        "jobs.train.inputs.dvc_stage_hash: string input given 12",
        "jobs.train.inputs.epochs: the component declares no such input",
        "jobs.evaluate.inputs.in_models_model_pt: node train has no output oops",
    ]


def test_check_passes_on_a_fresh_compile_and_fails_after_editing_dvc_yaml(
    compiled: Path, copy_repo
) -> None:
    repo = copy_repo(compiled)
    result = run_cli(repo, "azureml", "compile", "--check")
    assert result.exit_code == 0, result.output
    before = md5_tree(repo / OUT)

    dvc_yaml = repo / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("models/model.pt", "models/net.pt"))
    result = run_cli(repo, "azureml", "compile", "--check")
    assert result.exit_code == 1
    assert "--- a/pipelines/azureml/components/train.yml" in result.stdout
    assert "+    --out models/net.pt=${{outputs.out_models_net_pt}} \\" in result.stdout
    assert result.stderr.startswith("error: pipelines/azureml is out of date with dvc.yaml")
    assert len(result.stderr.splitlines()) == 1
    assert md5_tree(repo / OUT) == before  # --check writes nothing


def test_a_train_param_changes_only_the_train_and_evaluate_hashes(
    compiled: Path, copy_repo
) -> None:
    repo = copy_repo(compiled)

    def digests() -> dict[str, str]:
        return {step.node: step.digest for step in read_dag(repo).steps}

    def changed_by(path: str, edit) -> set[str]:
        before = digests()
        target = repo / path
        target.write_text(edit(target.read_text()))
        after = digests()
        return {node for node in before if before[node] != after[node]}

    def bump(key: str, step: int):
        def edit(text: str) -> str:
            params = yaml.safe_load(text)
            section, name = key.split(".")
            params[section][name] += step
            return yaml.safe_dump(params, sort_keys=False)

        return edit

    assert changed_by("params.yaml", bump("train.epochs", 1)) == {"train", "evaluate"}
    assert changed_by("params.yaml", bump("frames.workers", 1)) == set()  # no stage declares it
    assert changed_by("params.yaml", bump("features.patch", 2)) == {"features", "train", "evaluate"}
    assert changed_by("src/badpixels/frames.py", lambda text: f"{text}# edited\n") == {
        "frames",
        "features",
        "train",
        "evaluate",
    }
    data_md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    new_md5 = f"{'0' * 32}.dir"
    assert changed_by("data.dvc", lambda text: text.replace(data_md5, new_md5)) == set(STAGES)
    # The digest is about what would run, not what ran: dvc.lock does not enter it.
    assert changed_by("dvc.lock", lambda text: text.replace("md5: ", "md5: 0", 1)) == set()


def test_a_foreach_group_becomes_sibling_nodes(tmp_path: Path) -> None:
    repo = tmp_path / "fanout"
    repo.mkdir()
    (repo / "raw.txt").write_text("raw\n")
    (repo / "params.yaml").write_text("models: [small, large]\nlr: 0.1\n")
    stages = {
        "prepare": {
            "cmd": "cp raw.txt prepared.txt",
            "deps": ["raw.txt"],
            "outs": ["prepared.txt"],
        },
        "train": {
            "foreach": "${models}",
            "do": {
                "cmd": "cp prepared.txt model-${item}.txt",
                "deps": ["prepared.txt"],
                "params": ["lr"],
                "outs": ["model-${item}.txt"],
            },
        },
        "score": {
            "matrix": {"model": "${models}", "split": ["a", "b"]},
            "cmd": "cat model-${item.model}.txt > score-${item.model}-${item.split}.txt",
            "deps": ["model-${item.model}.txt"],
            "outs": ["score-${item.model}-${item.split}.txt"],
        },
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "fanout"\ndependencies = ["pyyaml"]\n\n'
        "[tool.branchflow.azureml.stages.train]\ntimeout = 60\n\n"
        '[tool.branchflow.azureml.stages."train@large"]\ncompute = "big"\n'
    )
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    init_repo(repo)
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 0, result.output

    jobs = load_job(source=repo / OUT / "pipeline-training.yml").jobs
    scores = [f"score_{model}_{split}" for model in ("small", "large") for split in "ab"]
    assert list(jobs) == ["prepare", "train_small", "train_large", *scores]
    document = yaml.safe_load((repo / OUT / "pipeline-training.yml").read_text())["jobs"]
    for model in ("small", "large"):
        assert document[f"train_{model}"]["inputs"]["in_prepared_txt"] == (
            "${{parent.jobs.prepare.outputs.out_prepared_txt}}"
        )
        assert document[f"score_{model}_b"]["inputs"][f"in_model_{model}_txt"] == (
            f"${{{{parent.jobs.train_{model}.outputs.out_model_{model}_txt}}}}"
        )
    # The group's table applies to each member; a member's own table replaces it.
    assert document["train_small"]["limits"] == {"timeout": 60}
    assert "compute" not in document["train_small"]
    assert document["train_large"]["compute"] == "azureml:big"
    assert "limits" not in document["train_large"]

    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("stages.train]", "stages.trian]"))
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 3
    assert "names trian, which dvc.yaml does not define" in result.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("shards", [None, (3, 2)], ids=["committed", "frames3-features2"])
def test_the_nodes_reproduce_every_stage_byte_for_byte(
    compiled: Path,
    reproduced_repo: Path,
    tmp_path: Path,
    copy_repo,
    shards: tuple[int, int] | None,
) -> None:
    """Each node runs like Azure ML runs it: in a fresh copy of its own code snapshot, inputs
    in separate read-only folders, outputs in empty folders. frames and features run as
    sibling shard nodes (4 and 8 as committed, the whole pipeline; or 3 and 2, recompiled, up
    to features); together their output folders hold what `dvc repro` writes, byte for
    byte."""
    repo = compiled
    if shards:
        repo = copy_repo(compiled)
        text = (repo / "pyproject.toml").read_text()
        text = text.replace("instance_count = 4", f"instance_count = {shards[0]}")
        text = text.replace("instance_count = 8", f"instance_count = {shards[1]}")
        (repo / "pyproject.toml").write_text(text)
        result = run_cli(repo, "azureml", "compile")
        assert result.exit_code == 0, result.stderr
    dag = read_dag(repo)
    pipeline = yaml.safe_load((repo / OUT / "pipeline-training.yml").read_text())
    stages = STAGES if shards is None else ["validate", "frames", "features"]
    folders: dict[str, Path] = {}
    training = find_pipeline(repo, load_settings(repo), "training")
    for source in data_sources(dag, training):  # its data asset's path holds it by name
        folder = tmp_path / "datastore" / source.md5
        shutil.copytree(reproduced_repo / source.path, folder / Path(source.path).name)
        folders[f"inputs.{source.name}"] = folder
        read_only(folder)
    produced: dict[str, list[Path]] = {}  # DVC path -> the folders its nodes wrote
    for node, job in pipeline["jobs"].items():
        component = yaml.safe_load((repo / OUT / job["component"]).read_text())
        if component["name"] not in stages:
            continue
        values = {}
        for name, value in job["inputs"].items():
            bound = PARENT.fullmatch(str(value))
            values[f"inputs.{name}"] = str(folders[bound[1]]) if bound else str(value)
        for name, spec in component["outputs"].items():
            folder = tmp_path / "outputs" / node / name
            folder.mkdir(parents=True)
            folders[f"jobs.{node}.outputs.{name}"] = values[f"outputs.{name}"] = folder
            produced.setdefault(spec["description"], []).append(folder)
        command = REFERENCE.sub(lambda m, v=values: str(v[m[1]]), component["command"])
        code = tmp_path / "nodes" / node
        shutil.copytree((repo / OUT / "components" / component["code"]).resolve(), code)
        # Passive OpenMP threads: same bytes, but no spinning against other load on few cores.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **job.get("environment_variables", {})}
        env.pop("BRANCHFLOW_GPU_DRIVER", None)  # train's GPU node, played by this CPU machine
        result = subprocess.run(
            ["bash", "-c", command], cwd=code, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        for name in component["outputs"]:
            read_only(folders[f"jobs.{node}.outputs.{name}"])

    counts = (
        {"frames": 4, "features": 8}
        if shards is None
        else dict(zip(["frames", "features"], shards, strict=True))
    )
    for step in (step for step in dag.steps if step.node in stages):
        for output in step.outputs:
            nodes = produced[output.path]
            assert len(nodes) == counts.get(step.node, 1), output.path
            merged: dict[str, str] = {}
            for folder in nodes:
                for name, digest in md5_tree(folder / Path(output.path).name).items():
                    assert merged.setdefault(name, digest) == digest, (output.path, name)
            expected = md5_tree(reproduced_repo / output.path)
            assert expected and merged == expected, output.path


def read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)


def test_submit_dry_run_prints_a_job_that_loads(compiled: Path, tmp_path: Path) -> None:
    result = run_cli(
        compiled, "azureml", "submit", "--dry-run", BRANCHFLOW_BRANCH="feature/Faster-Train"
    )
    assert result.exit_code == 0, result.stderr
    job_file = tmp_path / "job.yml"
    job_file.write_text(result.stdout)
    job = load_job(source=job_file)
    assert job._validate().passed
    context = resolve_context(compiled, {"BRANCHFLOW_BRANCH": "feature/Faster-Train"})
    names = names_for(context, load_settings(compiled))
    assert job.experiment_name == names.experiment
    assert job.display_name == names.run_name
    assert context.short_commit in names.run_name
    commit = context.commit
    data_md5 = yaml.safe_load((compiled / "data.dvc").read_text())["outs"][0]["md5"]
    assert job.tags["branch"] == "feature/Faster-Train"
    assert job.tags["commit"] == commit
    assert job.tags["data_hash"] == data_md5.removesuffix(".dir")
    assert list(job.jobs) == NODES


def test_submit_without_workspace_variables_names_them_in_one_line(compiled: Path) -> None:
    result = run_cli(compiled, "azureml", "submit", "--wait")
    assert result.exit_code == 3
    assert result.stderr == (
        "error: AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE not set: set "
        "them to the Azure ML workspace to submit to, or use --dry-run\n"
    )
    result = run_cli(compiled, "azureml", "submit", AZURE_SUBSCRIPTION_ID="0000")
    assert result.stderr.startswith("error: AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE not set")
    result = run_cli(compiled, "azureml", "plan", "--pipeline", "training")
    assert result.exit_code == 3
    assert result.stderr == (
        "error: AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE not set: set "
        "them to the Azure ML workspace to compare with\n"
    )


@pytest.mark.e2e
def test_torchrun_with_two_processes_matches_one(reproduced_repo: Path, tmp_path: Path) -> None:
    """`torchrun` starts two wrappers as Azure ML's PyTorch distribution would (RANK set): both
    train with DDP on gloo, and rank 0 hands over a model that evaluates on the held-out videos
    as well as the single-process model of `dvc repro`. Writes only under `tmp_path`."""
    code, features, model = tmp_path / "code", tmp_path / "in", tmp_path / "out"
    shutil.copytree(reproduced_repo / "src", code / "src")
    shutil.copyfile(reproduced_repo / "params.yaml", code / "params.yaml")
    features.mkdir()
    (features / "features").symlink_to(reproduced_repo / "data/processed/features")
    model.mkdir()
    sh(
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "branchflow.azureml.wrapper", "--stage", "train"),
        *("--in", f"data/processed/features={features}", "--out", f"models/model.pt={model}"),
        *("--", "python -m badpixels.train data/processed/features models/model.pt"),
        cwd=code,
    )
    assert [p.name for p in model.iterdir()] == ["model.pt"]
    frames, reports = reproduced_repo / "data/interim/frames", tmp_path / "reports"
    sh(
        sys.executable,
        "-m",
        "badpixels.evaluate",
        model / "model.pt",
        features / "features",
        frames,
        reports,
        cwd=code,
    )
    one = json.loads((reproduced_repo / "reports/metrics.json").read_text())["cnn"]["overall"]
    two = json.loads((reports / "metrics.json").read_text())["cnn"]["overall"]
    assert abs(one["f1"] - two["f1"]) <= 0.01, (one, two)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[tool.branchflow.azureml]\ncomptue = 'x'\n", "unknown key 'comptue'"),
        ("[tool.branchflow.azureml.stages.train]\ngpus = 2\n", "unknown key 'gpus'"),
        ("[tool.branchflow.azureml.stages.train]\ndistribution = 'mpi'\n", "must be one of"),
        ("[tool.branchflow.azureml.stages.train]\ntimeout = 0\n", "whole number >= 1"),
        ("[tool.branchflow.azureml.stages.train]\nprocess_count_per_instance = 2\n", "per node"),
        ("[tool.branchflow.azureml.computes.big]\nmax_instances = 2\n", "needs size"),
        ("[tool.branchflow.azureml.computes.big]\nsize = 'S'\ntier = 'spot'\n", "one of"),
        ("[tool.branchflow.azureml.computes.big]\nsize = 'S'\nmax_instances = 0\n", ">= 1"),
        ("[tool.branchflow.azureml]\npythonpath = ['../src']\n", "inside the repository"),
    ],
)
def test_bad_azureml_settings_are_errors(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(table)
    with pytest.raises(BranchflowError, match=message):
        load_settings(tmp_path)


@pytest.mark.parametrize("link", ["dependency", "out", "params"])
def test_compile_never_reads_or_writes_through_a_link_out_of_the_repository(
    tmp_path: Path, link: str
) -> None:
    """A committed symlink to a file or folder outside the repository: `compile` refuses in one
    line, reads nothing through it (its bytes never reach a snapshot) and writes nothing."""
    outside = tmp_path / "outside"
    (outside / "snapshots").mkdir(parents=True)
    (outside / "snapshots" / "keep.txt").write_text("not the repository's\n")
    (outside / "secret.txt").write_text("root:x:0:0\n")
    (outside / "params.yaml").write_text("lr: 0.1\n")
    repo = tmp_path / "linked"
    repo.mkdir()
    (repo / "train.py").write_text("print('train')\n")
    (repo / "params.yaml").write_text("lr: 0.1\n")
    stage = {"cmd": "python train.py", "deps": ["train.py"], "outs": ["model.txt"]}
    if link == "dependency":
        (repo / "data.txt").symlink_to(outside / "secret.txt")
        stage["deps"].append("data.txt")
    elif link == "params":
        (repo / "params.yaml").unlink()
        (repo / "params.yaml").symlink_to(outside / "params.yaml")
        stage["params"] = [{"params.yaml": None}]  # the whole file: read as it is
    else:
        (repo / "pipelines").mkdir()
        (repo / OUT).symlink_to(outside)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    (repo / "pyproject.toml").write_text('[project]\nname = "linked"\ndependencies = ["pyyaml"]\n')
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    init_repo(repo)
    before = md5_tree(outside)
    result = run_cli(repo, "azureml", "compile")
    assert result.exit_code == 3 and result.stderr.count("\n") == 1, result.output
    assert "a symlink leads out of the repository" in result.stderr
    assert md5_tree(outside) == before
    assert not list(repo.rglob("snapshots"))
