r"""Every name derived from the build context: experiments, models, runs, pipelines.

Names are derived here and nowhere else, so MLflow, DVC and Azure ML always agree on them.

Naming rules the sanitiser satisfies:

- Azure ML models: the REST API validates `^(?![\-_.])[a-zA-Z0-9\-_.]{1,255}(?<!\.)$`
  (azure-ai-ml 1.35, `_restclient/model_dataplane/operations/_models_operations.py`).
- Azure ML experiments: "Experiment name must be 1-256 characters, start with a letter or a
  number, and can only contain letters, numbers, underscores, and dashes" (service error quoted
  in github.com/microsoft/dstoolkit-mlops-v2/issues/179). Job/run ids: `^[a-zA-Z0-9][\w-]{0,255}$`
  (`_restclient/runhistory/operations/_runs_operations.py`).
- Azure ML components: "Must start with lowercase letter. Allowed characters are lowercase
  letters, numbers, and underscore(_). Maximum length is 255 characters."
  (learn.microsoft.com/azure/machine-learning/reference-yaml-component-command).
- Azure resource names compare case-insensitively (learn.microsoft.com, resource-name-rules).
- MLflow registered models: no `/`, `:` or `%`, and `posixpath.normpath(name) == name`
  (mlflow 3.x `utils/validation.py::_validate_model_name`, `store/model_registry/file_store.py`);
  names are stored in `String(256)` columns. MLflow experiment names: at most 500 characters.

So names use lowercase `[a-z0-9_-]`, start with a letter or digit and stay within
`MAX_NAME_LENGTH`; the pipeline name also follows the stricter component grammar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from branchflow.errors import BranchflowError

if TYPE_CHECKING:
    from branchflow.settings import Settings
    from branchflow.workspace.context import Context

# Well under the 255-character limits above, leaving room for suffixes added by later steps.
MAX_NAME_LENGTH = 128
HASH_LENGTH = 10


@dataclass(frozen=True)
class Names:
    """Names for one branch and pipeline type, valid in both MLflow and Azure ML."""

    experiment: str
    pipeline: str
    model: str
    production_model: str
    run_name: str


@dataclass(frozen=True)
class _Grammar:
    """Allowed characters, the filler that replaces the others, and what may not lead."""

    disallowed: re.Pattern[str]
    fill: str
    bad_start: re.Pattern[str]


_ASSET = _Grammar(re.compile(r"[^a-z0-9_-]+"), "-", re.compile(r"^[^a-z0-9]+"))
_COMPONENT = _Grammar(re.compile(r"[^a-z0-9_]+"), "_", re.compile(r"^[^a-z]+"))


def slugify(raw: str, *, component: bool = False) -> str:
    """Turn `raw` into a valid, stable name; a lossy conversion appends a hash of `raw`.

    Runs of the filler collapse to one, so a doubled filler (`--`, or `__` for components)
    never occurs in a lossless name; it marks the hash suffix. Lossless and hashed names
    therefore never coincide, and two hashed names differ whenever their raw strings do.
    """
    grammar = _COMPONENT if component else _ASSET
    body = grammar.disallowed.sub(grammar.fill, raw.lower())
    body = re.sub(re.escape(grammar.fill) + "{2,}", grammar.fill, body)
    body = grammar.bad_start.sub("", body).rstrip(grammar.fill)
    if body == raw and len(body) <= MAX_NAME_LENGTH:
        return body
    digest = _digest(raw)
    marker = grammar.fill * 2
    keep = MAX_NAME_LENGTH - len(marker) - HASH_LENGTH
    # "n" stands in when nothing valid is left, e.g. for a branch named only in emoji.
    return f"{body[:keep].rstrip(grammar.fill) or 'n'}{marker}{digest}"


def names_for(context: Context, settings: Settings, pipeline_type: str = "training") -> Names:
    """Derive every name for this context from `settings.name_pattern`.

    The candidate model fills the pattern with the pipeline type `model`, so all pipeline
    types of a branch share it; the pipeline name follows the Azure ML component grammar. A
    branch that does not fit the grammars (`feature/X`) gives every name the one hash suffix
    of its slug, so its experiment, model, pipeline and runs are found by the same suffix.
    """

    def fill(kind: str, branch: str) -> str:
        return settings.name_pattern.format(
            pipeline_type=kind, base=settings.base_name, branch=branch
        )

    body, lossy = _branch_body(context.branch)
    build = context.build_id or context.short_commit

    def named(kind: str, *, component: bool = False, run: bool = False) -> str:
        grammar = _COMPONENT if component else _ASSET
        marker = grammar.fill * 2
        tail = f"_{build}" if run else ""
        name = slugify(fill(kind, body) + tail, component=component)
        if not lossy and marker not in name:
            return name
        head = slugify(fill(kind, body), component=component).partition(marker)[0]
        tail = grammar.disallowed.sub(grammar.fill, tail.lower())
        keep = MAX_NAME_LENGTH - len(marker) - HASH_LENGTH - len(tail)
        head = head[:keep].rstrip(grammar.fill) or "n"
        return f"{head}{tail}{marker}{_digest(context.branch)}"

    names = Names(
        experiment=named(pipeline_type),
        pipeline=named(pipeline_type, component=True),
        model=named("model"),
        production_model=slugify(settings.production_model),
        run_name=named(pipeline_type, run=True),
    )
    if names.production_model in (names.model, names.experiment):
        raise BranchflowError(
            f"branch {context.branch!r} would be named {names.production_model!r}, the "
            "production model's name; rename the branch, or change [tool.branchflow] name_pattern"
        )
    return names


def _branch_body(branch: str) -> tuple[str, bool]:
    """The branch's slug without its hash suffix, and whether it had one (a lossless slug never
    holds the doubled filler that marks it)."""
    slug = slugify(branch)
    body, marker, _ = slug.rpartition(_ASSET.fill * 2)
    return (body, True) if marker else (slug, False)


def _digest(raw: str) -> str:
    """The hash suffix of a name made from `raw`."""
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:HASH_LENGTH]


def names_on(context: Context, settings: Settings, branch: str) -> Names:
    """The names of the builds of `branch` (another branch than `context`'s)."""
    other = dataclasses.replace(context, branch=branch, branch_slug=slugify(branch))
    return names_for(other, settings)


def qualified_names(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The name of each (file, key) of metrics or params: the key alone where no other file has
    it, `file:key` where several do. The one naming rule: `branchflow register` logs these names
    to MLflow, and the gate and report use them."""
    keys = list(keys)
    files = Counter(name for _, name in set(keys))
    return {(path, name): f"{path}:{name}" if files[name] > 1 else name for path, name in keys}
