"""branchflow: GitOps CI/CD for machine-learning pipelines built on DVC and MLflow.

The public API is what `__all__` lists; each name is imported when first used, so that
`import branchflow` (and `branchflow --help`) loads neither MLflow nor DVC. The command line,
`branchflow.cli`, is a thin layer over these functions.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("branchflow")  # one place: packages/branchflow/pyproject.toml
except PackageNotFoundError:  # a bare source checkout (the comment job's `python -S` renderer)
    __version__ = "unknown"

_API = {  # name -> the module that defines it
    "BranchflowError": "branchflow.errors",
    "Settings": "branchflow.settings",
    "load_settings": "branchflow.settings",
    "Context": "branchflow.workspace.context",
    "resolve_context": "branchflow.workspace.context",
    "Names": "branchflow.workspace.naming",
    "names_for": "branchflow.workspace.naming",
    "check_imports": "branchflow.workspace.imports",
    "Registration": "branchflow.registry.register",
    "register": "branchflow.registry.register",
    "Move": "branchflow.registry.champion",
    "promote": "branchflow.registry.champion",
    "rollback": "branchflow.registry.champion",
    "history": "branchflow.registry.champion",
    "declare": "branchflow.registry.declared",
    "reconcile": "branchflow.registry.declared",
    "PrunePlan": "branchflow.registry.prune",
    "prune": "branchflow.registry.prune",
    "pin": "branchflow.registry.pin",
    "compare": "branchflow.report.compare",
    "resolve_base": "branchflow.report.compare",
    "Verdict": "branchflow.report.gate",
    "run_gate": "branchflow.report.gate",
    "write_report": "branchflow.report.document",
    "check_drift": "branchflow.drift",
}
__all__ = [
    "BranchflowError",
    "Context",
    "Move",
    "Names",
    "PrunePlan",
    "Registration",
    "Settings",
    "Verdict",
    "__version__",
    "check_drift",
    "check_imports",
    "compare",
    "declare",
    "history",
    "load_settings",
    "names_for",
    "pin",
    "promote",
    "prune",
    "reconcile",
    "register",
    "resolve_base",
    "resolve_context",
    "rollback",
    "run_gate",
    "write_report",
]

if TYPE_CHECKING:
    from branchflow.drift import check_drift
    from branchflow.errors import BranchflowError
    from branchflow.registry.champion import Move, history, promote, rollback
    from branchflow.registry.declared import declare, reconcile
    from branchflow.registry.pin import pin
    from branchflow.registry.prune import PrunePlan, prune
    from branchflow.registry.register import Registration, register
    from branchflow.report.compare import compare, resolve_base
    from branchflow.report.document import write_report
    from branchflow.report.gate import Verdict, run_gate
    from branchflow.settings import Settings, load_settings
    from branchflow.workspace.context import Context, resolve_context
    from branchflow.workspace.imports import check_imports
    from branchflow.workspace.naming import Names, names_for


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'branchflow' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value
