"""`branchflow report` on real git + DVC repositories, read as GitHub renders the markdown."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import cmarkgfm
import pytest
import yaml
from click.testing import CliRunner
from cmarkgfm.cmark import Options
from dvc.utils.flatten import flatten

from branchflow.cli import main
from branchflow.report.compare import Base, data_versions
from branchflow.report.document import write_report
from branchflow.report.gate import run_gate
from branchflow.report.render import describe_change
from branchflow.settings import load_settings
from branchflow.workspace.context import resolve_context
from branchflow.workspace.naming import names_for
from tests.conftest import built_repo, hide_ci_variables, init_repo, sh
from tests.metrics_project import branch_with, make_metrics_repo

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Node:
    """An HTML element: its tag, attributes and children (elements and text)."""

    def __init__(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tag, self.attrs = tag, dict(attrs)
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children).strip()

    def elements(self) -> list[Node]:
        return [child for child in self.children if isinstance(child, Node)]

    def find_all(self, *tags: str) -> list[Node]:
        found = []
        for child in self.elements():
            found += [child] if child.tag in tags else []
            found += child.find_all(*tags)
        return found


class TreeBuilder(HTMLParser):
    VOID = frozenset({"img", "br", "hr", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Node("root", [])
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, attrs)
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        while len(self.stack) > 1 and self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def rendered(report: Path) -> Node:
    """The report as GitHub renders it: GFM with tables, raw HTML (`<details>`) kept."""
    html = cmarkgfm.github_flavored_markdown_to_html(
        report.read_text(encoding="utf-8"), options=Options.CMARK_OPT_UNSAFE
    )
    builder = TreeBuilder()
    builder.feed(html)
    return builder.root


def tables(page: Node) -> dict[str, list[list[str]]]:
    """Each table's rows of cell texts, keyed by the heading above it ("metrics", ...);
    the collapsed table under a `<details>` is keyed `<heading> (more)`."""
    found: dict[str, list[list[str]]] = {}
    heading = ""
    for element in page.elements():
        if element.tag in ("h2", "h3"):
            heading = "header" if element.tag == "h2" else element.text().split()[0].lower()
        for table in [element] if element.tag == "table" else element.find_all("table"):
            key = f"{heading} (more)" if element.tag == "details" else heading
            found[key] = [
                [c.text() for c in tr.find_all("th", "td")] for tr in table.find_all("tr")
            ]
    return found


def check_images(page: Node, report: Path) -> list[Path]:
    """Every `<img>` is a relative path to a real, non-trivial PNG in `<report>_files/`."""
    sources = [img.attrs["src"] for img in page.find_all("img")]
    assert all(source.startswith(f"{report.stem}_files/") for source in sources), sources
    images = [report.parent / source for source in sources]
    for path in images:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path
    try:
        from PIL import Image
    except ImportError:
        return images
    for path in images:
        with Image.open(path) as image:
            image.verify()
            assert min(image.size) >= 200, (path, image.size)
    return images


@pytest.fixture(scope="module")
def fewer_epochs(reproduced_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real project: its reproduced state committed on `main`, then a branch that trains
    for 1 epoch instead of 12, reproduced (uncommitted, as in CI before the report)."""

    def make(repo: Path) -> None:
        shutil.copytree(reproduced_repo, repo, symlinks=True)
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-q", "--allow-empty", "-m", "base: reproduced", cwd=repo)
        sh("git", "checkout", "-q", "-b", "fewer-epochs", cwd=repo)
        params = (repo / "params.yaml").read_text()
        assert "  epochs: 12\n" in params
        (repo / "params.yaml").write_text(params.replace("  epochs: 12\n", "  epochs: 1\n"))
        sh("dvc", "repro", "-q", cwd=repo)

    return built_repo(tmp_path_factory, "fewer-epochs", make)


def test_report_on_a_branch_that_changes_train_params(fewer_epochs: Path) -> None:
    repo = fewer_epochs
    out = repo / "pr" / "report.md"
    verdict = write_report(repo, out, "main", env={})
    page = rendered(out)
    old = flatten(json.loads(sh("git", "show", "main:reports/metrics.json", cwd=repo).stdout))
    new = flatten(json.loads((repo / "reports" / "metrics.json").read_text()))
    f1, f1_base = new["cnn.overall.f1"], old["cnn.overall.f1"]
    assert f1 < f1_base - 0.01  # the gate's tolerance in pyproject.toml
    assert not verdict.passed

    # First screen: the verdict, the key metric and its change, then why.
    first = page.elements()[0]
    assert first.tag == "h2"
    # The drop is judged by its paired interval over the 16 held-out videos: it excludes 0.
    document = json.loads(out.with_suffix(".json").read_text())
    judged = next(m for m in document["metrics"] if m["name"] == "cnn.overall.f1")["vs_base"]
    assert judged["units"] == 16 and judged["verdict"] == "worse"
    assert judged["low"] < f1 - f1_base < judged["high"] < 0
    interval = f"95% interval {judged['low']:+.4f} to {judged['high']:+.4f}"
    change = f"{f1 - f1_base:+.4f} ({interval}) ▼ worse"
    assert first.text() == f"❌ Gate failed · cnn.overall.f1 {f1:.4f} ({change} vs main)"
    reasons = [li.text() for li in page.elements()[1].find_all("li")]
    assert (
        f"❌ FAIL: cnn.overall.f1 vs main: {f1_base:.4f} → {f1:.4f}, worse ({interval} of the "
        "change over 16 paired units)"
    ) in reasons
    assert "Intervals: the 95% paired bootstrap interval of a change" in out.read_text()
    assert any(reason.startswith("note: no champion: no MLflow registry") for reason in reasons)

    head = sh("git", "rev-parse", "HEAD", cwd=repo).stdout[:7]
    main_sha = sh("git", "rev-parse", "main", cwd=repo).stdout[:7]
    data_md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    found = tables(page)
    assert found["header"] == [
        ["branch", "base", "data (DVC md5)", "run"],
        [
            f"fewer-epochs at {head} with uncommitted changes",
            f"main at {main_sha}",
            f"{data_md5} (same as base)",
            "local",
        ],
    ]

    # Metrics: every metric of both files, with the right change, changed ones up front.
    assert found["metrics"][0] == ["metric", "this branch", "main", "change"]
    assert found["metrics"][1][0] == "cnn.overall.f1"
    rows = {row[0]: row[1:] for row in found["metrics"][1:] + found["metrics (more)"][1:]}
    assert rows.keys() == new.keys() == old.keys()
    intervals = {m["name"]: m["vs_base"] for m in document["metrics"] if m["vs_base"]}
    assert intervals.keys() == {"cnn.overall.f1", "cnn.overall.recall"}  # the units' formulas
    for name, value in new.items():
        change = describe_change(value - old[name], True)
        if name in intervals:
            shown = f"95% interval {intervals[name]['low']:+.4f} to {intervals[name]['high']:+.4f}"
            change = f"{value - old[name]:+.4f} ({shown}) ▼ worse"
        assert rows[name] == [f"{value:.4f}", f"{old[name]:.4f}", change]
    lead = {row[0] for row in found["metrics"][1:]}
    assert lead >= {name for name in new if new[name] != old[name]}
    assert "▼ worse" in rows["cnn.overall.f1"][2]

    assert found["params"] == [["param", "main", "this branch"], ["train.epochs", "12", "1"]]

    assert len(check_images(page, out)) == 4  # PR curve, confusion, detections x2

    stages = {row[0]: row[1:] for row in found["pipeline"][1:]}
    assert list(stages) == ["validate", "frames", "features", "train", "evaluate"]
    for stage in ("validate", "frames", "features"):
        assert stages[stage][0] == "unchanged"  # as the base has it: no claim it was cached
    assert stages["train"] == ["rerun", "param train.epochs 12 → 1"]
    assert stages["evaluate"] == ["rerun", "models/model.pt changed (output of train)"]


def test_gate_fails_the_worse_real_model_with_each_rule_on_a_line(
    fewer_epochs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")
    executable = shutil.which("branchflow")
    assert executable, "branchflow is not installed on PATH"
    result = sh(executable, "gate", "--base", "main", cwd=fewer_epochs, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gate failed: ")
    assert any(
        line.startswith("FAIL: `cnn.overall.f1` vs main: ") and ", worse (95% interval -" in line
        for line in lines
    )


@pytest.fixture(scope="module")
def unreproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_metrics_repo(tmp_path_factory.mktemp("first") / "repo", reproduce=False)


def test_first_run_without_base_metrics_or_champion(
    unreproduced: Path, copy_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = copy_repo(unreproduced)
    branch_with(repo, "first")
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["report", "--base", "main"])
    assert (result.exit_code, result.output) == (0, "wrote report.md: gate passed\n")
    out = repo / "report.md"
    page = rendered(out)
    assert (
        page.elements()[0].text() == "✅ Gate passed · model.f1 0.9600 (no base metrics: first run)"
    )
    reasons = [li.text() for li in page.elements()[1].find_all("li")]
    assert "note: no base metrics in main: first run, comparison rules skipped" in reasons
    found = tables(page)
    assert found["metrics"][1] == ["model.f1", "0.9600", "—", "—"]
    assert found["pipeline"][1:] == [
        ["prepare", "new", "not in main's dvc.lock"],
        ["train", "new", "not in main's dvc.lock"],
    ]
    text = page.text()
    assert "main has no metrics: first run, nothing to compare with." in text
    assert "No champion: no MLflow registry configured" in text
    assert len(check_images(page, out)) == 1
    notes = run_gate(repo, "main", env={}).notes
    assert [f"note: {note}" for note in notes] == [r for r in reasons if r.startswith("note: ")]


def test_champion_column_and_rule(metrics_repo: Path, copy_repo) -> None:
    import mlflow

    repo = copy_repo(metrics_repo)
    production = names_for(resolve_context(repo, {}), load_settings(repo)).production_model
    store = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(store, store)  # explicit registry: other tests set mlflow's
    experiment = client.create_experiment("champion", artifact_location=(repo / "art").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "model.f1", 0.99)
    client.create_registered_model(production)
    version = client.create_model_version(
        production,
        f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={"metric.model.loss": "0.05"},
    )
    client.set_registered_model_alias(production, "champion", version.version)

    branch_with(repo, "close-to-main", f1=0.955)
    out = repo / "report.md"
    verdict = write_report(repo, out, "main", env={})
    assert not verdict.passed
    assert [c.text for c in verdict.checks if not c.passed] == [
        "`model.f1` got worse by 0.0350 vs champion v1 (0.9900 → 0.9550); at most 0.0200 allowed"
    ]
    found = tables(rendered(out))
    assert found["metrics"][0] == [
        "metric",
        "this branch",
        "main",
        "change",
        "champion v1",
        "vs champion",
    ]
    rows = {row[0]: row[1:] for row in found["metrics"][1:]}
    assert rows["model.f1"] == ["0.9550", "0.9600", "-0.0050 ▼ worse", "0.9900", "-0.0350 ▼ worse"]
    assert rows["model.loss"] == ["0.1000", "0.1000", "no change", "0.0500", "+0.0500 ▲ worse"]


def test_data_version_reads_the_pipelines_dvc_files_at_both_revisions(tmp_path: Path) -> None:
    """Any `.dvc` file the pipeline reads counts, not only `data.dvc`; several give sorted
    `path:md5` pairs; a `.dvc` file another pipeline reads does not count."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.dvc").write_text("outs:\n- md5: aaa.dir\n  path: raw\n")
    (tmp_path / "batch.dvc").write_text("outs:\n- md5: ccc.dir\n  path: batch\n")
    init_repo(tmp_path)
    base = Base("main", sh("git", "rev-parse", "HEAD", cwd=tmp_path).stdout.strip())
    (tmp_path / "labels.csv.dvc").write_text("outs:\n- md5: bbb\n  path: labels.csv\n")
    read = {"data/raw.dvc", "labels.csv.dvc"}
    assert data_versions(tmp_path, base, read) == ("data/raw:aaa.dir, labels.csv:bbb", "aaa.dir")
