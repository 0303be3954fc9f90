"""The plots `dvc.yaml` defines, as PNG files: this branch overlaid on the base.

`dvc plots diff --json` gives each plot as a Vega-Lite spec with its data inlined (or, for image
plots, one file per revision); `vl_convert` renders the specs offline, with no CDN.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError
from branchflow.report.compare import WORKSPACE

PNG_SCALE = 2


@dataclass(frozen=True)
class Plot:
    """One plot: its title and its PNG files, each with the revision it shows."""

    title: str
    images: tuple[tuple[str, Path], ...]


def render_plots(
    root: Path,
    base_commit: str | None,
    out_dir: Path,
    labels: Mapping[str, str],
    names: Collection[str] | None = None,
) -> tuple[list[Plot], list[str]]:
    """Write every plot (of `names`, as `dvc plots` names them; a folder stands for the files
    in it) as PNG under `out_dir`; return the plots and this branch's plot errors (errors at
    the base, such as a plot it does not have yet, are left out).

    `labels` renames revisions (`workspace`, the base commit) in legends and captions. Most of
    the time is spent in `dvc` and `vl_convert` with the GIL released: run it in a thread.
    Without the `report` extra (vl-convert), Vega-Lite plots are named in the errors instead.
    """
    try:
        import vl_convert
    except ImportError:
        vl_convert = None  # type: ignore[assignment]
    unrendered: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        result = _dvc_plots_json(root, base_commit, Path(scratch))
        plots = []
        for name, entries in result.get("data", {}).items():
            if not _wanted(name, names):
                continue
            images = []
            for entry in entries:
                if entry.get("type") == "vega" and vl_convert is None:
                    unrendered.append(name)
                elif entry.get("type") == "vega":
                    spec = _relabel(entry["content"], labels)
                    path = out_dir / f"{_slug(name)}.png"
                    path.write_bytes(
                        vl_convert.vegalite_to_png(spec, scale=PNG_SCALE, allowed_base_urls=[])
                    )
                    title = _title(spec) or name
                    images.append((" vs ".join(labels.get(r, r) for r in entry["revisions"]), path))
                elif entry.get("type") == "image":
                    (rev,) = entry["revisions"]
                    path = out_dir / f"{_slug(Path(name).stem)}_{_slug(rev)}.png"
                    shutil.copyfile(entry["url"], path)
                    title = name
                    images.append((labels.get(rev, rev), path))
            if images:
                plots.append(Plot(title, tuple(images)))
    errors = [
        _error_text(e)
        for e in result.get("errors", [])
        if e.get("rev", WORKSPACE) == WORKSPACE and _wanted(e.get("name"), names)
    ]
    if unrendered:
        errors.append(
            f"{', '.join(dict.fromkeys(unrendered))}: not rendered; install branchflow[report]"
        )
    return plots, errors


def _wanted(name: str | None, names: Collection[str] | None) -> bool:
    """Whether the plot `name` is one of `names` (None: all), or a file in one of them."""
    if names is None or name is None:
        return True
    return any(name == wanted or name.startswith(f"{wanted}/") for wanted in names)


def _dvc_plots_json(root: Path, base_commit: str | None, scratch: Path) -> dict[str, Any]:
    """`dvc plots diff <base> --json` (or `dvc plots show --json` without a base)."""
    command = ["diff", base_commit] if base_commit else ["show"]
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", *command, "--json", "-o", str(scratch)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise BranchflowError(f"dvc plots {command[0]} failed in {root}: {reason}")
    return json.loads(result.stdout or "{}")


def _relabel(value: Any, labels: Mapping[str, str]) -> Any:
    """`value` with every string that names a revision replaced by its label."""
    if isinstance(value, dict):
        return {key: _relabel(item, labels) for key, item in value.items()}
    if isinstance(value, list):
        return [_relabel(item, labels) for item in value]
    return labels.get(value, value) if isinstance(value, str) else value


def _title(spec: Mapping[str, Any]) -> str | None:
    title = spec.get("title")
    return title.get("text") if isinstance(title, dict) else title


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "plot"


def _error_text(error: Mapping[str, Any]) -> str:
    where = ": ".join(str(error[key]) for key in ("name", "source") if error.get(key))
    return f"{where or 'plots'}: {error.get('type', 'error')}: {error.get('msg', '')}"
