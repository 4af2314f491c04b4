"""The package's shape: no runtime import cycles, small modules, opt-in heavy dependencies.

These read the source (no import side effects) except the last two, which import the package in
a fresh interpreter and look at ``sys.modules``.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rakka_trio"
MAX_LINES = 600


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports when it is imported (module level only)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        base = package.split(".")
        if level > 1:
            base = base[: -(level - 1)]
        return ".".join([*base, module] if module else base)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known:
                        found.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                target = resolve(node.module, node.level)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in known else target)

    visit(ast.parse(path.read_text()).body)
    # Importing a submodule runs its parents' __init__ first.
    for module in list(found):
        parts = module.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in known and parent != name and not name.startswith(parent + "."):
                found.add(parent)
    found.discard(name)
    return {m for m in found if m in known}


def test_no_runtime_import_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _runtime_imports(name, path, known) for name, path in modules.items()}
    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    assert cycles == []


def test_no_module_is_too_long() -> None:
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "tui").rglob("*.py")]
    long = {
        str(path.relative_to(ROOT)): n
        for path in sources
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_code_cites_no_design_document() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for base in (PACKAGE, ROOT / "tui", ROOT / "bench", ROOT / "examples", ROOT / "tests")
        for p in base.rglob("*.py")
        if "DESIGN" in p.read_text() and p.name != "test_architecture.py"
    ]
    assert offenders == []


def _fresh_import(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.strip()


@pytest.mark.parametrize("heavy", ["textual", "rich", "coredis"])
def test_importing_the_library_loads_no_optional_dependency(heavy: str) -> None:
    code = f"import sys, rakka_trio; print({heavy!r} in sys.modules)"
    assert _fresh_import(code) == "False"
