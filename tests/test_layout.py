"""The package's layout keeps its rules: the core is pure and self-contained, and no module of
`service` takes part in an import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "service"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_only(tree: ast.Module) -> set[int]:
    """The ids of import nodes under `if TYPE_CHECKING:`: they never run."""
    return {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for statement in block.body
        for node in ast.walk(statement)
    }


def _imports(path: Path, *, with_type_only: bool = True) -> set[str]:
    """Every `service` module a file imports, at any depth of the file (deferred imports too)."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skipped = set() if with_type_only else _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "service" or name.startswith("service.")}


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _known(name: str) -> str | None:
    """The module a dotted import name lands in (`service.core.parsing.parse` -> the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("module", [name for name in MODULES if name.startswith("service.core")])
def test_core_imports_nothing_outside_itself(module: str) -> None:
    """A core module imports only other core modules, so the core stays pure and testable alone."""
    outside = {name for name in _imports(MODULES[module]) if not name.startswith("service.core")}
    assert not outside, f"{module} imports {sorted(outside)}"


def _cycle() -> list[str] | None:
    """One import circle among the package's modules, or None."""
    graph = {
        module: {
            known
            for name in _imports(path, with_type_only=False)
            if (known := _known(name)) and known != module and known != "service"
        }
        for module, path in MODULES.items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in visiting:
            return [*visiting[visiting.index(module) :], module]
        if module in done:
            return None
        visiting.append(module)
        for target in sorted(graph[module]):
            if found := visit(target):
                return found
        visiting.pop()
        done.add(module)
        return None

    for module in graph:
        if found := visit(module):
            return found
    return None


def test_no_import_circles() -> None:
    """No module imports at run time, even lazily, a module that imports it back: each layer
    stands alone (an import only for the type checker never runs)."""
    assert _cycle() is None, " -> ".join(_cycle() or [])
