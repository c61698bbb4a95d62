"""The house rules the layout promises, checked on the code itself.

- The engine never imports gradio: only explorer/app/ (the Gradio face) may.
- Stages import one way: catalog -> cases -> scoring -> prompts -> models -> runs ->
  analysis -> probes -> service -> app | cli (schema.py and printable.py are shared by all).
- No import circles between modules (counting module-level imports).
- No module imports another module's private (_underscore) names.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "explorer"
STAGES = ["", "catalog", "cases", "scoring", "prompts", "models", "runs", "analysis", "probes", "service", "app", "cli"]
SHARED = {"explorer.schema", "explorer.printable", "explorer"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking(stmt) -> bool:
    """`if TYPE_CHECKING:` imports are for type checkers only; they do not run."""
    return isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)


def _imports(path: Path):
    """(imported module, names, at module level?) for every explorer import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    top |= {
        id(n)
        for stmt in tree.body
        if isinstance(stmt, (ast.If, ast.Try)) and not _type_checking(stmt)
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], id(node) in top


def _engine_files():
    return sorted(p for p in ENGINE.rglob("*.py"))


def _stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 2 and parts[1] in STAGES else 0


def _resolve(target: str, names: list[str]) -> list[str]:
    """The explorer modules an import statement reaches ("from explorer.runs import store")."""
    out = []
    for name in names:
        candidate = f"{target}.{name}"
        path = ROOT / Path(*candidate.split("."))
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            out.append(candidate)
    return out or [target]


def test_only_the_app_imports_gradio():
    offenders = []
    for path in _engine_files():
        if "app" in path.relative_to(ENGINE).parts[:1]:
            continue
        for target, _, _ in _imports(path):
            if target.split(".")[0] in ("gradio", "gradio_client", "spaces"):
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not offenders, offenders


def test_stages_import_down_the_flow():
    upward = []
    for path in _engine_files():
        module = _module_name(path)
        here = _stage(module)
        for target, names, _ in _imports(path):
            if not target.startswith("explorer"):
                continue
            for reached in _resolve(target, names):
                if reached in SHARED:
                    continue
                if _stage(reached) > here and here != 0:
                    upward.append(f"{module} -> {reached}")
    assert not upward, upward


def test_no_import_circles():
    graph = defaultdict(set)
    for path in _engine_files():
        module = _module_name(path)
        for target, names, at_top in _imports(path):
            if at_top and target.startswith("explorer"):
                for reached in _resolve(target, names):
                    if reached != module:
                        graph[module].add(reached)
    seen, on_path, cycles = set(), [], []

    def visit(node):
        if node in on_path:
            cycles.append(on_path[on_path.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        on_path.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, cycles[:5]


def test_no_private_names_across_modules():
    offenders = []
    for path in _engine_files():
        module = _module_name(path)
        for target, names, _ in _imports(path):
            if target.startswith("explorer") and target != module:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    offenders.append(f"{module} imports {private} from {target}")
    assert not offenders, offenders


@pytest.mark.parametrize("package", [s for s in STAGES if s])
def test_each_stage_says_what_enters_and_leaves(package):
    init = ENGINE / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc) > 40, f"{init} needs a docstring: what enters, what leaves"
