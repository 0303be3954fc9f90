"""The toolkit's layers: a module imports only from its own layer or those below it, and no
import that runs (at module level or inside a function; not `if TYPE_CHECKING:`) closes a
circle."""

from __future__ import annotations

import ast
from pathlib import Path

import branchflow

PACKAGE = Path(branchflow.__file__).parent
# Lowest first. cli sits on everything; nothing below imports it.
LAYERS = [
    ("branchflow", "branchflow.errors", "branchflow.files", "branchflow.paired"),
    ("branchflow.settings",),
    ("branchflow.workspace",),
    ("branchflow.tracking", "branchflow.drift", "branchflow.generated"),
    ("branchflow.registry",),
    ("branchflow.report",),
    ("branchflow.ci", "branchflow.azureml"),
    ("branchflow.cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of `module`: that of its longest matching prefix."""
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(f"{prefix}.")
    ]
    return max(matches)[1]


def imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, anywhere in its code."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        names: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        known = {module_name(p) for p in PACKAGE.rglob("*.py")}
        found[module] = {name for name in names if name in known and name != module}
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in imports().items()
        for target in targets
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_no_import_circle() -> None:
    graph = imports()
    done: set[str] = set()
    circles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []


def test_the_public_api_imports_and_loads_nothing_heavy_until_used() -> None:
    """Every name of `__all__` resolves; importing the package alone loads no MLflow or DVC."""
    import subprocess
    import sys

    code = (
        "import sys, branchflow; assert not {'mlflow', 'dvc'} & set(sys.modules); "
        "print(all(getattr(branchflow, name) is not None for name in branchflow.__all__))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr
