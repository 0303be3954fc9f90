"""The privileged comment jobs post only what `branchflow.report.render` renders from a validated
artifact: crafted artifacts on disk are refused with one line and no output, and a real one
renders to markdown whose only links are the CI run and its own copies of the figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options

from branchflow.report import render
from branchflow.report.document import write_report
from tests.conftest import ROOT, built_once
from tests.metrics_project import branch_with, make_metrics_repo
from tests.test_report import TreeBuilder
from tests.test_workflows import github_env, run_job

PR = 7
RUN_URL = "https://github.com/octo-org/toy/actions/runs/4242"
FIGURE = "reports_curve_csv.png"
TAGS = {"h2", "h3", "p", "ul", "li", "code", "strong", "table", "thead", "tbody", "tr", "th"}
TAGS |= {"td", "details", "summary", "img", "a"}


def pr_env(runner: Path, head_ref: str = "feature/curve") -> dict[str, str]:
    """What GitHub sets for the `pull_request` build of PR 7."""
    runner.mkdir(parents=True, exist_ok=True)
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_REF": f"refs/pull/{PR}/merge",
        "GITHUB_HEAD_REF": head_ref,
        "GITHUB_BASE_REF": "main",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "octo-org/toy",
        "GITHUB_RUN_ID": "4242",
    }


@pytest.fixture(autouse=True)
def no_github_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process renders must not write to the CI run that runs these tests."""
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PR's real report (`branchflow report` on a tiny DVC project, gate passed) and, in
    `artifact/`, what pr.yml uploads: report.json, report_files/, gate-exit.txt."""

    def make(home: Path) -> None:
        repo = make_metrics_repo(home / "repo")
        branch_with(repo, "feature/curve", f1=0.955)
        verdict = write_report(repo, repo / "report.md", "main", env=pr_env(home / "runner"))
        assert verdict.passed
        artifact = home / "artifact"
        artifact.mkdir()
        shutil.copy2(repo / "report.json", artifact)
        shutil.copytree(repo / "report_files", artifact / "report_files")
        (artifact / "gate-exit.txt").write_text("0\n")

    return built_once(tmp_path_factory, "comment", make)


@pytest.fixture
def artifact(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good artifact for this test to tamper with."""
    return Path(shutil.copytree(built / "artifact", tmp_path / "artifact", symlinks=True))


def html_of(markdown: str) -> TreeBuilder:
    """The markdown as GitHub parses it (raw HTML kept, to see anything that gets through)."""
    builder = TreeBuilder()
    builder.feed(cmarkgfm.github_flavored_markdown_to_html(markdown, Options.CMARK_OPT_UNSAFE))
    return builder


def tag_names(node: Any) -> set[str]:
    """The tags of every element under `node`."""
    return {child.tag for child in node.elements()}.union(*map(tag_names, node.elements()))


def links(builder: TreeBuilder) -> tuple[list[str], list[str]]:
    """Every link target and image source in the parsed page."""
    page = builder.root
    return [a.attrs.get("href") for a in page.find_all("a")], [
        img.attrs.get("src") for img in page.find_all("img")
    ]


def post(artifact: Path, out: Path, conclusion: str = "success") -> int:
    """What pr-comment.yml runs, in this process."""
    document = str(artifact / "report.json")
    return render.main(
        [document, "--out", str(out), "--conclusion", conclusion, "--run-url", RUN_URL]
    )


def edit(artifact: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = artifact / "report.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def put(*keys: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets document[k1][k2]... to `value`."""

    def change(document: dict[str, Any]) -> None:
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def symlink_figure_to(target: Callable[[Path], Path]) -> Callable[[Path], None]:
    def tamper(artifact: Path) -> None:
        figure = artifact / "report_files" / FIGURE
        figure.unlink()
        figure.symlink_to(target(artifact))

    return tamper


def symlink_figures_dir(artifact: Path) -> None:
    elsewhere = artifact.parent / "elsewhere"
    (artifact / "report_files").rename(elsewhere)
    (artifact / "report_files").symlink_to(elsewhere, target_is_directory=True)


def symlink_document(artifact: Path) -> None:
    (artifact / "report.json").rename(artifact.parent / "real.json")
    (artifact / "report.json").symlink_to(artifact.parent / "real.json")


def write_figure(data: bytes) -> Callable[[Path], None]:
    return lambda artifact: (artifact / "report_files" / FIGURE).write_bytes(data)


def raw_json(old: str, new: str) -> Callable[[Path], None]:
    def tamper(artifact: Path) -> None:
        path = artifact / "report.json"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    return tamper


def gate_exit(text: str) -> Callable[[Path], None]:
    return lambda artifact: (artifact / "gate-exit.txt").write_text(text)


def many_figures(artifact: Path) -> None:
    image = {"label": "x", "file": FIGURE}
    edit(artifact, put("plots", 0, "images", value=[image] * (render.MAX_FIGURES + 1)))


def failed(document: dict[str, Any]) -> None:
    """The verdict of a gate that said no: a failing check, and passed false."""
    document["verdict"]["checks"][0]["passed"] = False
    document["verdict"]["passed"] = False


INTERVAL = {"low": -0.02, "high": 0.01, "units": 16, "confidence": 0.95, "verdict": "worse"}


def on_document(*keys: str | int, value: Any) -> Callable[[Path], None]:
    return lambda artifact: edit(artifact, put(*keys, value=value))


CRAFTED = {
    # markup in strings
    "email autolink": (
        on_document("verdict", "notes", 0, value="<../../../etc/x@host>"),
        "verdict.notes[0]: '<../../../etc/x@host>' has a character outside",
    ),
    "bare email": (
        on_document("verdict", "notes", 0, value="see ../../etc/x@host.com"),
        "outside backticks",
    ),
    "url autolink": (
        on_document("plots", 0, "title", value="<https://evil.example/t.png>"),
        "plots[0].title",
    ),
    "reference link": (
        on_document("base", "ref", value="main\n\n[r]: /etc/passwd"),
        "base.ref",
    ),
    "raw html": (
        on_document("stages", 1, "reasons", value=['<img src="https://evil.example/t.png">']),
        "stages[1].reasons[0]",
    ),
    "backtick in a branch": (on_document("run", "branch", value="x` <b>hi</b> `"), "run.branch"),
    "newline in a metric": (on_document("metrics", 0, "name", value="f1\n# hi"), "name"),
    "img in a metric": (on_document("metrics", 0, "name", value="f1<img src=x>"), "name"),
    "unpaired backtick": (on_document("verdict", "checks", 0, "text", value="`f1 is"), "unpaired"),
    "fake headline": (on_document("verdict", "notes", 0, value="✅ Gate passed"), "outside"),
    "tracking image": (
        on_document("plots", 0, "images", 0, "file", value="https://evil.example/t.png"),
        "not a figure file name",
    ),
    # files
    "path traversal": (
        on_document("plots", 0, "images", 0, "file", value="../../../etc/passwd.png"),
        "not a figure file name",
    ),
    "symlink to a file outside": (
        symlink_figure_to(lambda _: Path("/etc/passwd")),
        "cannot be opened as a plain file",
    ),
    "symlink to a directory": (
        symlink_figure_to(lambda artifact: artifact.parent),
        "cannot be opened as a plain file",
    ),
    "symlinked figures folder": (symlink_figures_dir, "is not a directory holding the figures"),
    "symlinked document": (symlink_document, "cannot be opened as a plain file"),
    "missing figure": (on_document("plots", 0, "images", 0, "file", value="gone.png"), "gone"),
    "oversize figure": (
        write_figure(render.PNG_MAGIC + b"\0" * render.MAX_FIGURE_BYTES),
        "more than the 2097152 allowed",
    ),
    "not a png": (write_figure(b"GIF89a" + b"\0" * 100), "is not a PNG image"),
    "truncated png": (
        lambda artifact: (artifact / "report_files" / FIGURE).write_bytes(
            (artifact / "report_files" / FIGURE).read_bytes()[:-12]
        ),
        "is not a PNG image",
    ),
    "too many figures": (many_figures, "more than 32"),
    # the PR number
    "number with a command": (on_document("pr", value="7; rm -rf /"), "not a pull request"),
    "number as text": (on_document("pr", value="7"), "not a pull request number"),
    "fractional number": (on_document("pr", value=7.5), "not a pull request number"),
    "boolean number": (on_document("pr", value=True), "not a pull request number"),
    "negative number": (on_document("pr", value=-7), "not a pull request number"),
    "no number": (on_document("pr", value=None), "pr is null"),
    # the verdict against the run
    "forged pass on a failed run": (lambda artifact: None, "ended in failure"),
    "forged pass with exit 1": (gate_exit("1\n"), "verdict says passed but the gate exited 1"),
    "forged fail with exit 0": (
        lambda artifact: edit(artifact, failed),
        "verdict says failed but the gate exited 0",
    ),
    "verdict its checks contradict": (
        on_document("verdict", "checks", 0, "passed", value=False),
        "verdict: says passed, which its checks contradict",
    ),
    "gate exit past 255": (gate_exit("999\n"), "not an exit status"),
    "nested too deep": (raw_json('"pr": 7', '"pr": ' + "[" * 990 + "]" * 990), "not a JSON"),
    "gate exit not a number": (gate_exit("0;id\n"), "not an exit status"),
    "no gate exit": (lambda artifact: (artifact / "gate-exit.txt").unlink(), "gate-exit.txt"),
    # numbers and schema
    "nan": (raw_json('"value": 0.955', '"value": NaN'), "NaN is not a JSON number"),
    "infinity": (raw_json('"value": 0.955', '"value": -Infinity'), "Infinity"),
    "overflow": (raw_json('"value": 0.955', '"value": 1e999'), "not a finite number"),
    "number as text in a metric": (on_document("metrics", 0, "value", value="0.99"), "value"),
    "unknown schema": (on_document("schema", value="branchflow-report/3"), "rebase"),
    "forged interval verdict": (
        on_document("metrics", 0, "vs_base", value={**INTERVAL, "verdict": "fine"}),
        "vs_base.verdict",
    ),
    "interval of one unit": (
        on_document("metrics", 0, "vs_base", value={**INTERVAL, "units": 1}),
        "not a count of units",
    ),
    "extra key": (on_document("comment", value="hi"), "unknown: comment"),
    "extra nested key": (on_document("metrics", 0, "html", value="<b>"), "unknown: html"),
    "duplicate key": (raw_json('"pr": 7', '"pr": 7, "pr": 8'), "a key appears twice"),
    "not json": (lambda artifact: (artifact / "report.json").write_text("{"), "not a JSON"),
}

CONCLUSIONS = {"forged pass on a failed run": "failure", "forged pass with exit 1": "failure"}


@pytest.mark.parametrize("case", CRAFTED, ids=str)
def test_a_crafted_artifact_is_refused_with_one_line_and_no_output(
    case: str, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, problem = CRAFTED[case]
    tamper(artifact)
    out = tmp_path / "comment" / "report.md"
    assert post(artifact, out, CONCLUSIONS.get(case, "success")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert lines[0].endswith("; refusing to post this report")
    assert problem in lines[0]
    assert not out.parent.exists()


def test_the_real_report_renders_to_the_same_markdown_with_only_its_figures(
    built: Path, artifact: Path, tmp_path: Path
) -> None:
    """Run as the comment job runs it: `python3 -S` (no site-packages: the standard library
    and the toolkit's source only), the PR number to $GITHUB_OUTPUT."""
    out = tmp_path / "comment" / "report.md"
    output = tmp_path / "github-output"
    command = [
        sys.executable,
        "-S",
        "-m",
        "branchflow.report.render",
        str(artifact / "report.json"),
    ]
    command += ["--out", str(out), "--conclusion", "success", "--run-url", RUN_URL]
    env = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output)}
    env["PYTHONPATH"] = str(ROOT / "packages" / "branchflow" / "src")
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"rendered {out} for PR #{PR}\n"
    assert output.read_text() == f"pr={PR}\n"

    markdown = out.read_text()
    assert markdown == (built / "repo" / "report.md").read_text()  # one renderer
    page = html_of(markdown)
    assert links(page) == ([RUN_URL], [f"report_files/{FIGURE}"])
    assert tag_names(page.root) <= TAGS
    assert [p.name for p in (out.parent / "report_files").iterdir()] == [FIGURE]
    copied = (out.parent / "report_files" / FIGURE).read_bytes()
    assert copied == (artifact / "report_files" / FIGURE).read_bytes()
    assert page.root.elements()[0].text().startswith("✅ Gate passed · model.f1 0.9550")


def test_a_broken_gate_heads_the_comment_whatever_the_verdict(
    artifact: Path, tmp_path: Path
) -> None:
    (artifact / "gate-exit.txt").write_text("3\n")
    out = tmp_path / "comment" / "report.md"
    assert post(artifact, out, "failure") == 0
    headline = html_of(out.read_text()).root.elements()[0]
    assert headline.tag == "h2"
    assert headline.text().startswith("⚠️ Gate broke (exit 3): no verdict, fix the build")


def test_a_failed_gate_heads_the_comment(artifact: Path, tmp_path: Path) -> None:
    edit(artifact, failed)
    (artifact / "gate-exit.txt").write_text("1\n")
    out = tmp_path / "comment" / "report.md"
    assert post(artifact, out, "failure") == 0
    assert html_of(out.read_text()).root.elements()[0].text().startswith("❌ Gate failed")


INERT = {
    "[x](report_files/../../etc/passwd) ![i](/etc/passwd)",
    "[r]: /etc/passwd",
    "**b** _i_ ~s~ # h {x} $y$ !z?",
    "www.evil.example https://evil.example/t.png",
}


@pytest.mark.parametrize("text", sorted(INERT))
def test_markup_the_schema_allows_is_rendered_as_text(
    text: str, artifact: Path, tmp_path: Path
) -> None:
    """Brackets, parens, `:`, `/`, `*`: allowed in text and names, escaped or in code spans."""

    def change(document: dict[str, Any]) -> None:
        document["verdict"]["notes"][0] = text
        document["verdict"]["checks"][0]["text"] = f"`{text}` is the metric"
        document["metrics"][0]["name"] = text
        document["run"]["branch"] = f"a]({text})"
        document["plots"][0]["images"][0]["label"] = f"{text}@evil.example"

    edit(artifact, change)
    out = tmp_path / "comment" / "report.md"
    assert post(artifact, out) == 0
    page = html_of(out.read_text())
    assert links(page) == ([RUN_URL], [f"report_files/{FIGURE}"])
    items = [li.text() for li in page.root.find_all("li")]
    assert f"note: {text}" in items
    assert f"✅ ok: {text} is the metric" in items


def test_a_hostile_branch_name_is_cleaned_by_the_report_and_rendered_inert(
    built: Path, tmp_path: Path
) -> None:
    """`branchflow report` keeps only allowed characters, so its own document validates."""
    repo = built / "repo"
    head = "x`<img src=https://evil.example/t.png>`@a.b\n[r]: /etc/passwd"
    out = tmp_path / "report.md"
    write_report(repo, out, "main", env=pr_env(tmp_path / "runner", head))
    document = render.load(tmp_path / "report.json").document
    assert (
        document["run"]["branch"] == "x??img src=https://evil.example/t.png??@a.b?[r]: /etc/passwd"
    )
    page = html_of(out.read_text())
    assert links(page) == ([RUN_URL], [f"report_files/{FIGURE}"])


def test_the_dev_comment_job_renders_the_artifact(artifact: Path, tmp_path: Path) -> None:
    """dev.yml's render step, as GitHub runs it, from this checkout (the trusted code)."""
    runner = tmp_path / "runner"
    runner.mkdir()
    artifact.rename(runner / "dev-report")
    env = github_env(runner, ROOT)
    github = {"server_url": "https://github.com", "repository": "octo-org/toy", "run_id": "4242"}
    contexts = {"github": github, "secrets": {}}
    step = "Validate the artifact and render the comment"
    (result,) = run_job("dev.yml", "comment", step, step, ROOT, env, contexts)
    assert result.returncode == 0, result.stderr
    markdown = (runner / "comment" / "report.md").read_text()
    assert links(html_of(markdown)) == ([RUN_URL], [f"report_files/{FIGURE}"])
    assert (runner / "comment" / "report_files" / FIGURE).is_file()


def test_a_report_past_githubs_comment_limit_keeps_the_gated_metrics_and_says_what_it_left_out(
    artifact: Path, tmp_path: Path
) -> None:
    """2,000 metrics (the schema's most) would not fit in one comment: the rows that do, the
    gated ones first, and a line with the count of the others; no name inside HTML."""

    def change(document: dict[str, Any]) -> None:
        gated = document["metrics"][0]
        extra = {**gated, "gated": False, "value": 0.5, "base": 0.5, "change": 0.0}
        rest = [{**extra, "name": f"stage_{i:04d}.per_class.metric_{i:04d}"} for i in range(1999)]
        document["metrics"] = [gated, *rest]
        document["base"]["ref"] = "octo-org/toy#1 @octocat"

    edit(artifact, change)
    out = tmp_path / "comment" / "report.md"
    assert post(artifact, out) == 0
    markdown = out.read_text()
    assert len(markdown) <= render.MAX_COMMENT < 65_536
    (note,) = [line for line in markdown.splitlines() if "metrics not shown" in line]
    shown = markdown.count("| `stage_")
    assert note.startswith(f"{1999 - shown} metrics not shown") and 0 < shown < 1999
    assert "| `model.f1` |" in markdown  # the gated metric
    (summary,) = [line for line in markdown.splitlines() if "<summary>" in line]
    assert "@" not in summary and "#1" not in summary


def test_a_gate_with_no_rules_heads_the_comment_as_a_warning(
    artifact: Path, tmp_path: Path
) -> None:
    edit(artifact, put("verdict", "checks", value=[]))
    out = tmp_path / "comment" / "report.md"
    assert post(artifact, out) == 0
    headline = html_of(out.read_text()).root.elements()[0].text()
    assert headline.startswith("⚠️ Gate has no rules: nothing was checked")
