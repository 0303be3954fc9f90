"""`branchflow check`: the local Python modules a DVC stage runs but does not list in `deps`.

A stage's `cmd` is read for `python -m pkg.mod` and `python path/to/script.py` (also
`python3`, after options, after `&&`/`;`/`|`, one command per line or list item). Modules are
looked up in the import roots: the folder Python puts first on `sys.path` (the stage's `wdir`
for `-m`, the script's folder for a script), then `PYTHONPATH` as the `cmd` sets it
(`PYTHONPATH=. python ...`, `export PYTHONPATH=src`), then `src/` and `[tool.branchflow.azureml]
pythonpath` of the repository. Their imports are followed with `ast`, transitively, including
imports inside functions, relative imports, `from pkg import submodule` and the `__init__.py`
of every package on the way. Only files inside the repository count; dynamic imports
(`importlib`, `__import__`) are not seen. A dependency on a folder covers every file in it.

A local module that no import root holds but the repository root or a folder above the
importing file does (`import src.utils.logs` with `PYTHONPATH` set in a shell, or `sys.path`
edited in code) is followed too, and reported as unreachable: the builds and Azure ML nodes
have only the roots above on their path.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError

_PYTHON = re.compile(r"python[0-9.]*")
_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
_OPTIONS_WITH_ARG = "WX"  # `python -W arg`, `-X arg`: the next word is no script
_PATH = "PYTHONPATH"


@dataclass(frozen=True)
class StageImports:
    """One stage: its Python entry points (as written in `cmd`), the undeclared files, and the
    modules it imports from a folder that is on no import root (module -> that folder)."""

    stage: str
    entries: tuple[str, ...]
    undeclared: tuple[str, ...]
    unreachable: tuple[tuple[str, str], ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.undeclared or self.unreachable)

    def lines(self) -> list[str]:
        lines = []
        if self.undeclared:
            files, entries = ", ".join(self.undeclared), ", ".join(self.entries)
            lines.append(f"stage {self.stage}: {files} not in deps (imported by {entries})")
        for module, folder in self.unreachable:
            lines.append(
                f"stage {self.stage}: imports {module} from {folder}, which only a PYTHONPATH or "
                f"sys.path set outside dvc.yaml provides; add {folder!r} to "
                "[tool.branchflow.azureml] pythonpath (the builds' and Azure ML's PYTHONPATH)"
            )
        return lines


def check_imports(root: Path) -> list[StageImports]:
    """Every stage with a `cmd` in every dvc.yaml under `root`, in `dvc.yaml` order."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from branchflow.settings import load_settings
    from branchflow.workspace.dag import stage_id

    try:
        with Repo(str(root)) as repo:
            top = Path(os.path.normpath(repo.root_dir))
            stages = sorted(repo.index.stages, key=lambda stage: stage.path_in_repo)
            stages = [stage for stage in stages if getattr(stage, "cmd", None)]
            extra = [top / "src", *(top / p for p in load_settings(top).azureml.pythonpath)]
            return [_check_stage(stage_id(stage), stage, top, extra) for stage in stages]
    except DvcException as exc:
        raise BranchflowError(f"cannot read the DVC pipeline in {root}: {exc}") from exc


def undeclared_imports(root: Path) -> dict[str, list[str]]:
    """Stage name -> sorted repository paths it imports but does not declare; only offenders."""
    return {s.stage: list(s.undeclared) for s in check_imports(root) if s.undeclared}


def _check_stage(sid: str, stage: Any, top: Path, extra: list[Path]) -> StageImports:
    wdir = Path(os.path.normpath(stage.wdir))
    entries: list[str] = []
    files: set[Path] = set()
    unreachable: dict[str, str] = {}
    for words, pythonpath in _python_calls(sid, stage.cmd):
        roots = [*_pythonpath_roots(pythonpath, wdir), *extra]
        found = _entry(words, wdir, roots)
        if found is not None:
            entries.append(shlex.join(words))
            files |= _walk(*found, top, unreachable)
    deps = [Path(os.path.normpath(dep.fs_path)) for dep in stage.deps if not _is_params(dep)]
    undeclared = sorted(
        path.relative_to(top).as_posix()
        for path in files
        if path.is_relative_to(top) and not any(path.is_relative_to(dep) for dep in deps)
    )
    return StageImports(
        sid, tuple(dict.fromkeys(entries)), tuple(undeclared), tuple(sorted(unreachable.items()))
    )


def _python_calls(sid: str, cmd: str | list[str]) -> Iterator[tuple[list[str], str]]:
    """Each `python ...` command in `cmd`, normalised to `python -m mod` or `python x.py`, with
    the `PYTHONPATH` the command line gives it (an assignment before it, or an earlier
    `export PYTHONPATH=...` of the same line)."""
    for line in [cmd] if isinstance(cmd, str) else cmd:
        for text in line.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = ""
            try:
                words = list(lexer)
            except ValueError as exc:
                raise BranchflowError(f"stage {sid}: cannot parse its cmd {text!r}: {exc}") from exc
            start, exported = 0, ""
            for i, word in enumerate([*words, ";"]):
                if word in _SEPARATORS:
                    command = words[start:i]
                    if command[:1] == ["export"]:
                        exported = _assigned(command) or exported
                    call = _python_call(command)
                    if call:
                        assigned = _assigned(command)
                        yield call, exported if assigned is None else assigned
                    start = i + 1


def _assigned(command: list[str]) -> str | None:
    """The value the last `PYTHONPATH=...` word of `command` gives, if any."""
    values = [word.split("=", 1)[1] for word in command if word.startswith(f"{_PATH}=")]
    return values[-1] if values else None


def _pythonpath_roots(value: str, wdir: Path) -> list[Path]:
    """The folders a `PYTHONPATH` value names, relative ones from `wdir`; `$PWD` is `wdir`,
    other variables are left out."""
    roots = []
    for entry in value.split(os.pathsep):
        for here in ("$PWD", "${PWD}", "$(pwd)"):
            entry = entry.replace(here, str(wdir))
        if entry and "$" not in entry:
            roots.append(Path(os.path.normpath(wdir / entry)))
    return roots


def _python_call(words: list[str]) -> list[str] | None:
    """`[python, -m, mod]` or `[python, script]` from one simple command, else None."""
    at = next((i for i, w in enumerate(words) if _PYTHON.fullmatch(os.path.basename(w))), None)
    if at is None:
        return None
    rest = iter(words[at + 1 :])
    for word in rest:
        if not word.startswith("-"):
            return [words[at], word]
        if word == "--check-hash-based-pycs":
            next(rest, None)
            continue
        if word == "-" or word.startswith("--"):  # stdin, --help, --version: no file runs
            return None
        for i, flag in enumerate(word[1:], start=2):
            if flag == "c":
                return None
            if flag == "m":
                module = word[i:] or next(rest, None)
                return [words[at], "-m", module] if module else None
            if flag in _OPTIONS_WITH_ARG:
                if not word[i:]:
                    next(rest, None)
                break
    return None


def _entry(words: list[str], wdir: Path, extra: list[Path]) -> tuple[list[Path], list[Path]] | None:
    """The first files a call runs and the import roots it runs with, or None if not local."""
    if words[1] == "-m":
        roots, parts = [wdir, *extra], words[2].split(".")
        files = _find(roots, parts)
        if files and files[-1].parent.name == parts[-1] and files[-1].name == "__init__.py":
            files.append(files[-1].with_name("__main__.py"))  # `python -m pkg` runs it
        return (files, roots) if files else None
    script = Path(os.path.normpath(wdir / words[1]))
    return ([script], [script.parent, *extra]) if script.is_file() else None


def _walk(
    start: list[Path], roots: list[Path], top: Path, unreachable: dict[str, str]
) -> set[Path]:
    """`start` and every local file it imports, transitively; modules found only outside the
    roots go into `unreachable` (module -> the folder that holds it, from `top`)."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        if path.is_relative_to(top):
            todo.extend(_imports(path, roots, top, unreachable))
    return seen


def _imports(
    path: Path, roots: list[Path], top: Path, unreachable: dict[str, str]
) -> Iterator[Path]:
    """The local files that the imports of the Python file at `path` load."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        where = path.relative_to(top).as_posix()
        raise BranchflowError(f"cannot read the Python file {where}: {exc}") from exc
    # Where a module no root holds may still come from: sys.path or PYTHONPATH set elsewhere.
    outside = [folder for folder in [*path.parents] if folder.is_relative_to(top)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                yield from _located(roots, outside, parts, alias.name, top, unreachable)
        elif isinstance(node, ast.ImportFrom):
            parts = node.module.split(".") if node.module else []
            names = [[*parts, alias.name] for alias in node.names if alias.name != "*"]
            if node.level:  # the package that `.` (`..`, ...) names
                bases = [path.parents[node.level - 1]] if node.level <= len(path.parents) else []
                for wanted in [parts, *names]:
                    yield from _find(bases, wanted)
                continue
            for wanted in [parts, *names]:  # `from pkg import submodule` loads both
                yield from _located(roots, outside, wanted, node.module or "", top, unreachable)


def _located(
    roots: list[Path],
    outside: list[Path],
    parts: list[str],
    module: str,
    top: Path,
    unreachable: dict[str, str],
) -> list[Path]:
    """The files of module `parts` from the roots; else from a folder outside them, recorded
    in `unreachable` under `module`, the name the import statement writes."""
    found = _find(roots, parts)
    if found or not parts:
        return found
    for folder in outside:
        found = _find([folder], parts)
        if found:
            unreachable.setdefault(module, folder.relative_to(top).as_posix())
            return found
    return []


def _find(roots: list[Path], parts: list[str]) -> list[Path]:
    """Files of the module `parts` and of its packages, from the first root holding it all."""
    for root in roots:
        files: list[Path] = []
        folder = root
        for i, part in enumerate(parts):
            if (folder / part / "__init__.py").is_file():
                files.append(folder / part / "__init__.py")
            elif i == len(parts) - 1 and (folder / f"{part}.py").is_file():
                return [*files, folder / f"{part}.py"]
            elif not (folder / part).is_dir():  # a folder without __init__.py: namespace
                break
            folder = folder / part
        else:
            if files or not parts:
                return files
    return []


def _is_params(dep: Any) -> bool:
    from dvc.dependency import ParamsDependency

    return isinstance(dep, ParamsDependency)
