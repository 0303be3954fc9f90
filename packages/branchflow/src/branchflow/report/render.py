"""The report as GitHub markdown, rendered from its data document (`report.json`) only.

`branchflow report` writes the document, then renders `report.md` from it with `render()`.
The privileged comment jobs run this module from a trusted checkout, with the standard library
only (no project install), on a document a pull request's build wrote:

    PYTHONPATH=packages/branchflow/src python3 -S -m branchflow.report.render \\
        ARTIFACT/report.json \\
        --out OUT/report.md [--conclusion success|failure --gate-exit ARTIFACT/gate-exit.txt]

It refuses the whole artifact, writing nothing, unless the document matches the schema exactly
(known keys, types, finite numbers, strings of a small character set) and every figure it names
is a regular file in `report_files/` that is a PNG of bounded size. It then escapes every
string, links nothing but its own copies of those figures, and writes `OUT` and
`OUT_files/`. With `--conclusion`, the gate's recorded exit status must agree with the run's
conclusion and the document's verdict, so a forged "passed" on a failed run is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from branchflow.errors import EXIT_OK, EXIT_TOOL, EXIT_VERDICT, BranchflowError
from branchflow.files import write_atomic
from branchflow.paired import CHANGE_VERDICTS

SCHEMA = "branchflow-report/2"
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_FIGURE_BYTES = 2 * 1024 * 1024
MAX_FIGURES = 32
MAX_ITEMS = 2000  # entries in any list of the document
MAX_NAME = 200
MAX_TEXT = 1000
# GitHub refuses a comment over 65,536 characters; leave room for CML's watermark and link.
MAX_COMMENT = 60_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Metrics are stored rounded, so a drop of exactly the tolerance may come out a hair above it.
EPSILON = 1e-9

# What a string may hold. Names (metrics, refs, params) are shown as code spans, where nothing
# is markup; text (the gate's sentences, notes, reasons) is plain text with every punctuation
# character backslash-escaped, and `name` code spans between backticks. `@` is kept out of
# plain text, where GitHub makes `a@b.c` a mailto link even when escaped; `<`, `>`, `&`, `|`,
# `\`, control characters and newlines are in neither.
_SAFE = "A-Za-z0-9 _.,:;/+=~%#!?()\\[\\]{}'\"*^$\\-"  # a regex class body
_SHOWN = _SAFE.replace("\\", "")
NAME = re.compile(f"[{_SAFE}@]{{1,{MAX_NAME}}}")
PLAIN = re.compile(f"[{_SAFE}→]*")
FIGURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}\.png")
COMMIT = re.compile(r"[0-9a-f]{7,40}")
VERSION = re.compile(r"[0-9]{1,10}")
RUN_URL = re.compile(
    r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9_.-]+){2}/actions/runs/[0-9]+"
)
GATE_EXIT = re.compile(r"(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})\n?")  # 0-255, as a shell exits
MAX_PR = 10**10
CONCLUSIONS = ("success", "failure")

# A stage against the base: changed and run, new, changed but its outputs restored from DVC's
# run-cache, changed but run neither way in this build (its lock entry is the PR's own), ...
STATUS_WORDS = {
    "rerun": "**rerun**",
    "new": "**new**",
    "restored": "restored (run-cache)",
    "not run": "**not run here**",
    "reused": "unchanged",
    "removed": "removed",
}
RUN_TYPES = ("pr", "dev", "main", "local")


class ReportError(BranchflowError):
    """A document or figure that breaks the rules: nothing is rendered from it."""


# --- the schema --------------------------------------------------------------------------

Check = Callable[[Any, str], Any]


def _fail(where: str, problem: str) -> NoReturn:
    raise ReportError(f"{where}: {problem}")


def _shown(value: Any) -> str:
    """`value` for an error line: one line, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        _fail(where, f"{_shown(value)} is not a name of 1-{MAX_NAME} characters [{_SHOWN}@]")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        _fail(where, f"{_shown(value)} is not a string of at most {MAX_TEXT} characters")
    parts = value.split("`")
    if len(parts) % 2 == 0:
        _fail(where, f"{_shown(value)} has an unpaired backtick")
    for index, part in enumerate(parts):
        if index % 2:
            _name(part, f"{where} (code)")
        elif not PLAIN.fullmatch(part):
            _fail(where, f"{_shown(value)} has a character outside [{_SHOWN}→] outside backticks")
    return value


def _pattern(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: Any, where: str) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            _fail(where, f"{_shown(value)} is not {what}")
        return value

    return check


def _one_of(*allowed: str) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in allowed or not isinstance(value, str):
            _fail(where, f"{_shown(value)} is not one of {', '.join(allowed)}")
        return value

    return check


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, f"{_shown(value)} is not true or false")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, f"{_shown(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        _fail(where, f"{_shown(value)} is not a finite number")
    return number


def _unit_count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value < MAX_PR:
        _fail(where, f"{_shown(value)} is not a count of units")
    return value


def _confidence(value: Any, where: str) -> float:
    number = _number(value, where)
    if not 0 < number < 1:
        _fail(where, f"{_shown(value)} is not a confidence level between 0 and 1")
    return number


def _pr_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_PR:
        _fail(where, f"{_shown(value)} is not a pull request number")
    return value


def _optional(check: Check) -> Check:
    def optional(value: Any, where: str) -> Any:
        return None if value is None else check(value, where)

    return optional


def _list(check: Check, limit: int = MAX_ITEMS) -> Check:
    def items(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or len(value) > limit:
            _fail(where, f"{_shown(value)} is not a list of at most {limit} items")
        return [check(item, f"{where}[{index}]") for index, item in enumerate(value)]

    return items


def _record(fields: Mapping[str, Check]) -> Check:
    def record(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            _fail(where, f"{_shown(value)} is not an object")
        if value.keys() != fields.keys():
            missing = ", ".join(fields.keys() - value.keys()) or "none"
            extra = ", ".join(sorted(map(str, value.keys() - fields.keys()))) or "none"
            _fail(where, f"keys differ from the schema (missing: {missing}; unknown: {extra})")
        return {key: check(value[key], f"{where}.{key}") for key, check in fields.items()}

    return record


_INTERVAL = _record(
    {
        "low": _number,
        "high": _number,
        "units": _unit_count,
        "confidence": _confidence,
        "verdict": _one_of(*CHANGE_VERDICTS),
    }
)

_DOCUMENT = _record(
    {
        "schema": _one_of(SCHEMA),
        "pr": _optional(_pr_number),
        "verdict": _record(
            {
                "passed": _boolean,
                "checks": _list(_record({"passed": _boolean, "text": _text})),
                "notes": _list(_text),
            }
        ),
        "run": _record(
            {
                "branch": _name,
                "commit": _pattern(COMMIT, "a commit"),
                "dirty": _boolean,
                "type": _one_of(*RUN_TYPES),
                "data": _optional(_name),
            }
        ),
        "base": _optional(
            _record(
                {
                    "ref": _name,
                    "commit": _pattern(COMMIT, "a commit"),
                    "data": _optional(_name),
                    "metrics_found": _boolean,
                    "metrics_missing": _optional(_text),
                }
            )
        ),
        "champion": _optional(_record({"version": _pattern(VERSION, "a model version")})),
        "champion_missing": _optional(_text),
        "key_metric": _optional(_name),
        "metrics": _list(
            _record(
                {
                    "name": _name,
                    "value": _optional(_number),
                    "base": _optional(_number),
                    "change": _optional(_number),
                    "champion": _optional(_number),
                    "higher_is_better": _boolean,
                    "gated": _boolean,
                    "vs_base": _optional(_INTERVAL),
                    "vs_champion": _optional(_INTERVAL),
                }
            )
        ),
        "params": _optional(
            _list(_record({"name": _name, "old": _optional(_name), "new": _optional(_name)}))
        ),
        "plots": _list(
            _record(
                {
                    "title": _text,
                    "images": _list(
                        _record({"label": _name, "file": _pattern(FIGURE, "a figure file name")})
                    ),
                }
            )
        ),
        "plot_errors": _list(_text),
        "stages": _optional(
            _list(
                _record({"stage": _name, "status": _one_of(*STATUS_WORDS), "reasons": _list(_text)})
            )
        ),
    }
)


def validate(document: Any, where: str = "report.json") -> dict[str, Any]:
    """`document` if it matches the schema exactly, else a `ReportError` naming the field."""
    if isinstance(document, dict) and document.get("schema", SCHEMA) != SCHEMA:
        _fail(
            f"{where}.schema",
            f"{_shown(document['schema'])} is not {SCHEMA}: render it with the branchflow "
            "that wrote it (rebase the pull request on the default branch)",
        )
    checked = _DOCUMENT(document, where)
    verdict = checked["verdict"]
    if verdict["passed"] != all(check["passed"] for check in verdict["checks"]):
        said = "passed" if verdict["passed"] else "failed"
        _fail(f"{where}.verdict", f"says {said}, which its checks contradict")
    return checked


def clean_name(text: str) -> str:
    """`text` as a name the schema accepts: other characters become `?`, long ones are cut."""
    return re.sub(f"[^{_SAFE}@]", "?", text[:MAX_NAME]) or "?"


def clean_text(text: str) -> str:
    """`text` as text the schema accepts (`name` spans kept when the backticks pair up)."""
    parts = text[:MAX_TEXT].split("`")
    if len(parts) % 2 == 0:
        parts = ["'".join(parts)]
    return "`".join(
        clean_name(part) if index % 2 else re.sub(f"[^{_SAFE}→]", "?", part)
        for index, part in enumerate(parts)
    )


# --- the artifact on disk ----------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A validated document and the bytes of each figure it names."""

    document: dict[str, Any]
    figures: dict[str, bytes]


def figures_dir(path: Path) -> Path:
    """Where the figures of the report (or document) at `path` live: `<stem>_files/`."""
    return path.parent / f"{path.stem}_files"


def load(path: Path) -> Artifact:
    """The document at `path` and its figures, each checked; a `ReportError` otherwise."""
    raw = _read_regular(path, MAX_DOCUMENT_BYTES)
    try:
        parsed = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except (ValueError, RecursionError) as exc:
        _fail(str(path), f"not a JSON document: {exc}")
    document = validate(parsed, path.name)
    names = [image["file"] for plot in document["plots"] for image in plot["images"]]
    if len(names) > MAX_FIGURES:
        _fail(str(path), f"names {len(names)} figures, more than {MAX_FIGURES}")
    folder = figures_dir(path)
    return Artifact(document, {name: _read_png(folder, name) for name in dict.fromkeys(names)})


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return found


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _read_regular(path: Path, limit: int, *, dir_fd: int | None = None) -> bytes:
    """The bytes of `path` if it is a regular file (not a symlink) of at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        _fail(str(path), f"cannot be opened as a plain file ({exc.strerror})")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            _fail(str(path), "is not a regular file")
        if info.st_size > limit:
            _fail(str(path), f"is {info.st_size} bytes, more than the {limit} allowed")
        return handle.read(limit)


def _read_png(folder: Path, name: str) -> bytes:
    """Figure `name` in `folder` (a real directory): a whole PNG of bounded size."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        _fail(str(folder), f"is not a directory holding the figures ({exc.strerror})")
    try:
        data = _read_regular(Path(name), MAX_FIGURE_BYTES, dir_fd=fd)
    except ReportError as exc:
        raise ReportError(f"{folder}/{exc}") from None
    finally:
        os.close(fd)
    if not (data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR" and data.endswith(PNG_END)):
        _fail(f"{folder / name}", "is not a PNG image")
    return data


def check_outcome(passed: bool, conclusion: str, gate_exit: int) -> None:
    """Refuse a verdict the pull request's run does not bear out.

    The run succeeds exactly when the gate exits 0; exit 0 needs a passing verdict, exit 1 a
    failing one; any other exit is a broken gate, whatever the verdict says.
    """
    if conclusion not in CONCLUSIONS:
        _fail("--conclusion", f"{_shown(conclusion)} is not one of {', '.join(CONCLUSIONS)}")
    if (conclusion == "success") != (gate_exit == EXIT_OK):
        _fail("gate-exit.txt", f"the gate exited {gate_exit}, but the run ended in {conclusion}")
    if gate_exit in (EXIT_OK, EXIT_VERDICT) and passed != (gate_exit == EXIT_OK):
        verdict = "passed" if passed else "failed"
        _fail("report.json", f"the verdict says {verdict} but the gate exited {gate_exit}")


def read_gate_exit(path: Path) -> int:
    """The gate's exit status that the pull request's build recorded in `path`."""
    text = _read_regular(path, 8).decode("ascii", errors="replace")
    if not GATE_EXIT.fullmatch(text):
        _fail(str(path), f"{_shown(text)} is not an exit status")
    return int(text)


# --- the markdown ------------------------------------------------------------------------


def render(
    document: Mapping[str, Any],
    folder: str,
    *,
    gate_exit: int | None = None,
    run_url: str | None = None,
) -> str:
    """The report as GitHub markdown, from a validated document, its images in `folder` (a
    relative path); `gate_exit` (the recorded exit status of `branchflow gate`) heads it when
    given, `run_url` links the CI run."""
    if run_url is not None and not RUN_URL.fullmatch(run_url):
        _fail(
            "run URL", f"{_shown(run_url)} is not https://<host>/<owner>/<repo>/actions/runs/<id>"
        )
    metrics = list(document["metrics"])
    while True:
        markdown = _markdown(document, metrics, folder, gate_exit, run_url)
        if len(markdown) <= MAX_COMMENT or not metrics:
            return markdown
        # GitHub's limit: drop the last rows (ungated ones go after the gated), a tenth a time
        metrics = metrics[: len(metrics) - max(1, len(metrics) // 10)]


def _markdown(
    document: Mapping[str, Any],
    metrics: list[Mapping[str, Any]],
    folder: str,
    gate_exit: int | None,
    run_url: str | None,
) -> str:
    base = document["base"]
    sections = [
        _verdict_section(document, gate_exit),
        _header_section(document, run_url),
        _metrics_section(document, metrics),
        _params_section(document["params"], base) if base else "",
        _plots_section(document, folder),
        _stages_section(document["stages"], base) if base else "",
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def fmt(value: float | None) -> str:
    """A metric value as the report shows it; None (absent) as a dash."""
    return "—" if value is None else f"{value:.4f}"


def describe_change(change: float, higher_is_better: bool) -> str:
    """`+0.0100 ▲ better`, `-0.0390 ▼ worse` or `no change`: readable without colour."""
    if abs(change) < EPSILON:
        return "no change"
    up = change > 0
    return f"{change:+.4f} {'▲' if up else '▼'} {'better' if up == higher_is_better else 'worse'}"


def interval_text(low: float, high: float, confidence: float) -> str:
    """A confidence interval of a change, as the gate and the report word it."""
    return f"{confidence:.0%} interval {low:+.4f} to {high:+.4f}"


def _title(passed: bool, checks: int, gate_exit: int | None) -> str:
    if gate_exit not in (None, EXIT_OK, EXIT_VERDICT):
        return f"⚠️ Gate broke (exit {gate_exit}): no verdict, fix the build"
    if not checks:
        return "⚠️ Gate has no rules: nothing was checked"
    return "✅ Gate passed" if passed else "❌ Gate failed"


def _verdict_section(document: Mapping[str, Any], gate_exit: int | None) -> str:
    verdict = document["verdict"]
    title = _title(verdict["passed"], len(verdict["checks"]), gate_exit)
    key = next((m for m in document["metrics"] if m["name"] == document["key_metric"]), None)
    if key is not None:
        title += f" · {_code(key['name'])} {_headline(key, document)}"
    lines = [f"## {title}", ""]
    lines += [
        f"- {'✅ ok' if c['passed'] else '❌ **FAIL**'}: {_sentence(c['text'])}"
        for c in verdict["checks"]
    ]
    lines += [f"- note: {_sentence(note)}" for note in verdict["notes"]]
    return "\n".join(lines)


def _headline(metric: Mapping[str, Any], document: Mapping[str, Any]) -> str:
    """The key metric's value and its change against the base, for the first line."""
    base, value = document["base"], metric["value"]
    if value is None:
        return "is missing on this branch"
    if base is None:
        return fmt(value)
    if metric["change"] is None:
        reason = "new metric" if base["metrics_found"] else _no_base_metrics(base)
        return f"{fmt(value)} ({reason})"
    change = _change(metric["change"], metric["higher_is_better"], metric["vs_base"])
    return f"{fmt(value)} ({change} vs {_code(base['ref'])})"


def _no_base_metrics(base: Mapping[str, Any]) -> str:
    return "base metrics unreadable" if base["metrics_missing"] else "no base metrics: first run"


def _header_section(document: Mapping[str, Any], run_url: str | None) -> str:
    run, base = document["run"], document["base"]
    branch = f"{_code(run['branch'])} at {_code(run['commit'][:7])}"
    if run["dirty"]:
        branch += " with uncommitted changes"
    kind = run["type"] + (f" #{document['pr']}" if document["pr"] else "")
    if run_url:
        kind += f" ([CI run]({run_url}))"
    data = _code(run["data"] or "unknown")
    if base:
        same = run["data"] == base["data"]
        data += " (same as base)" if same else f" (base: {_code(base['data'] or '-')})"
    row = [
        branch,
        f"{_code(base['ref'])} at {_code(base['commit'][:7])}" if base else "none",
        data,
        kind,
    ]
    return "\n".join(_table(["branch", "base", "data (DVC md5)", "run"], [row]))


def _metrics_section(document: Mapping[str, Any], metrics: list[Mapping[str, Any]]) -> str:
    """The metrics table; `metrics` are the document's, or their first ones where all of them
    would not fit in a comment."""
    base, champion = document["base"], document["champion"]
    found = bool(base and base["metrics_found"])
    headers = ["metric", "this branch"]
    if base:
        headers += [_code(base["ref"]), "change"]
    if champion:
        headers += [f"champion v{champion['version']}", "vs champion"]
    lead: list[list[str]] = []
    rest: list[list[str]] = []
    for metric in metrics:  # gated first, in the gate's order
        changed = metric["change"] is None or abs(metric["change"]) > EPSILON
        shown = metric["gated"] or (found and changed)
        (lead if shown else rest).append(_metric_row(metric, document))
    if not lead:  # nothing gated or changed: the table is all there is
        lead, rest = rest, []
    lines = ["### Metrics", "", *_table(headers, lead)]
    note = _intervals_note(metrics)
    if note:
        lines += ["", note]
    if rest:
        # no names in HTML: GitHub links @mentions and owner/repo#1 there, even escaped
        unchanged = ", unchanged vs the base" if found else ""
        lines += ["", f"<details><summary>{len(rest)} more metrics{unchanged}</summary>", ""]
        lines += [*_table(headers, rest), "", "</details>"]
    hidden = len(document["metrics"]) - len(metrics)
    if hidden:
        lines += [
            "",
            f"{hidden} metrics not shown: the comment would pass GitHub's limit of 65,536 "
            "characters; `report.json` in the run's artifact holds every one.",
        ]
    if base and base["metrics_missing"]:
        missing = _sentence(base["metrics_missing"])
        lines += ["", f"{_code(base['ref'])}'s metrics could not be read: {missing}."]
    elif base and not found:
        lines += ["", f"{_code(base['ref'])} has no metrics: first run, nothing to compare with."]
    if champion is None:
        lines += ["", f"No champion: {_sentence(document['champion_missing'] or 'unknown')}."]
    return "\n".join(lines)


def _metric_row(metric: Mapping[str, Any], document: Mapping[str, Any]) -> list[str]:
    higher, value = metric["higher_is_better"], metric["value"]
    row = [_code(metric["name"]), fmt(value)]
    base = document["base"]
    if base:
        if metric["change"] is not None:
            change = _change(metric["change"], higher, metric["vs_base"])
        elif value is None:
            change = "removed"
        else:
            change = "new" if base["metrics_found"] else "—"
        row += [fmt(metric["base"]), change]
    if document["champion"]:
        other = metric["champion"]
        both = value is not None and other is not None
        change = _change(value - other, higher, metric["vs_champion"]) if both else "—"
        row += [fmt(other), change]
    return row


def _change(change: float, higher_is_better: bool, interval: Mapping[str, Any] | None) -> str:
    """The change; with a paired interval, the interval and its verdict instead of a direction
    word that noise alone could have produced."""
    if interval is None:
        return describe_change(change, higher_is_better)
    shown = interval_text(interval["low"], interval["high"], interval["confidence"])
    verdict = interval["verdict"]
    mark = {"better": " ▲", "worse": " ▼"}.get(verdict, "")
    return f"{change:+.4f} ({shown}){mark} {'**worse**' if verdict == 'worse' else verdict}"


def _intervals_note(metrics: list[Mapping[str, Any]]) -> str | None:
    """What the intervals in the table mean, in words, when it shows any."""
    shown = [m[side] for m in metrics for side in ("vs_base", "vs_champion") if m[side]]
    if not shown:
        return None
    units = sorted({interval["units"] for interval in shown})
    counted = " or ".join(str(n) for n in units)
    return (
        f"Intervals: the {shown[0]['confidence']:.0%} paired bootstrap interval of a change, "
        f"over the {counted} held-out units both models were scored on. One that includes 0 is "
        "a change this evaluation set cannot tell from noise (another choice of units could "
        "reverse it); one that excludes 0 is a difference these units show, and the gate fails "
        "a detectable change for the worse."
    )


def _params_section(params: list[Mapping[str, Any]], base: Mapping[str, Any]) -> str:
    title = f"### Params changed vs {_code(base['ref'])}"
    if not params:
        return f"{title}\n\nNone."
    rows = [[_code(p["name"]), _value(p["old"]), _value(p["new"])] for p in params]
    return "\n".join([title, "", *_table(["param", _code(base["ref"]), "this branch"], rows)])


def _plots_section(document: Mapping[str, Any], folder: str) -> str:
    lines = ["### Plots"]
    for plot in document["plots"]:
        links = [f"![{_alt(i['label'])}]({folder}/{i['file']})" for i in plot["images"]]
        lines += ["", f"**{_sentence(plot['title'])}**", ""]
        if len(links) == 1:
            lines.append(links[0])
        elif links:
            lines += _table([_code(i["label"]) for i in plot["images"]], [links])
    if not document["plots"]:
        lines += ["", "No plots defined in `dvc.yaml`."]
    if document["plot_errors"]:
        lines += ["", *(f"- plot error: {_sentence(e)}" for e in document["plot_errors"])]
    return "\n".join(lines)


def _stages_section(stages: list[Mapping[str, Any]] | None, base: Mapping[str, Any]) -> str:
    title = f"### Pipeline stages vs {_code(base['ref'])} (from `dvc.lock`)"
    if not stages:
        return f"{title}\n\nNo `dvc.lock` in the workspace: run `dvc repro`."
    rows = [
        [
            _code(s["stage"]),
            STATUS_WORDS[s["status"]],
            "; ".join(map(_sentence, s["reasons"])) or _why_not(s["status"], base),
        ]
        for s in stages
    ]
    return "\n".join([title, "", *_table(["stage", "status", "why"], rows)])


def _why_not(status: str, base: Mapping[str, Any]) -> str:
    if status == "reused":
        return f"deps, params and command as in {_code(base['ref'])}"
    return "not in the workspace's `dvc.lock`"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A GFM table of cells already rendered (no `|` or newline can come from the data)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _code(name: str) -> str:
    """A validated name as inline code: it holds no backtick, so nothing in it is markup."""
    return f"`{name}`"


def _plain(text: str) -> str:
    """Validated plain text with every ASCII punctuation character escaped: no markup."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def _sentence(text: str) -> str:
    """Validated text: plain parts escaped, the parts between backticks as inline code."""
    parts = text.split("`")
    return "".join(_code(p) if i % 2 else _plain(p) for i, p in enumerate(parts))


def _alt(label: str) -> str:
    """A name as an image's alt text: letters, digits and a little punctuation, escaped."""
    return _plain(re.sub(r"[^A-Za-z0-9 ._()/-]", "", label))


def _value(value: str | None) -> str:
    return "—" if value is None else _code(value)


# --- the command line --------------------------------------------------------------------


def publish(
    source: Path,
    out: Path,
    *,
    conclusion: str | None = None,
    gate_exit: Path | None = None,
    run_url: str | None = None,
) -> Artifact:
    """Check the artifact whose document is `source`, then write `out` and its figures to
    `<out stem>_files/` (which must not exist yet). Nothing is written unless all is valid."""
    artifact = load(source)
    status = None
    if conclusion is not None:
        if artifact.document["pr"] is None:
            _fail(source.name, "pr is null, but a pull request's run was named (--conclusion)")
        status = read_gate_exit(gate_exit or source.parent / "gate-exit.txt")
        check_outcome(artifact.document["verdict"]["passed"], conclusion, status)
    folder = figures_dir(out)
    markdown = render(artifact.document, folder.name, gate_exit=status, run_url=run_url)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    for name, data in artifact.figures.items():
        (folder / name).write_bytes(data)
    write_atomic(out, markdown)
    return artifact


def main(argv: list[str] | None = None) -> int:
    """`python3 -m branchflow.report.render`: check an artifact and render it; exit 1 if refused."""
    parser = argparse.ArgumentParser(
        prog="python3 -m branchflow.report.render", description=__doc__
    )
    parser.add_argument("document", type=Path, help="report.json of the artifact")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--conclusion", help="the pull request run's conclusion")
    parser.add_argument("--gate-exit", type=Path, help="default: gate-exit.txt beside DOCUMENT")
    parser.add_argument("--run-url", help="the CI run to link")
    args = parser.parse_args(argv)
    try:
        artifact = publish(
            args.document,
            args.out,
            conclusion=args.conclusion,
            gate_exit=args.gate_exit,
            run_url=args.run_url,
        )
    except ReportError as exc:
        print(f"error: {exc}; refusing to post this report", file=sys.stderr)
        return EXIT_VERDICT
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return EXIT_TOOL
    number = artifact.document["pr"]
    output = os.environ.get("GITHUB_OUTPUT")
    if output and number is not None:
        with open(output, "a", encoding="utf-8") as handle:
            handle.write(f"pr={number}\n")
    print(f"rendered {args.out}" + (f" for PR #{number}" if number else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
