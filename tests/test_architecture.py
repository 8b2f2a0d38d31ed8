"""Structure of src/deepsynth: layers that only import downwards, no import cycle, a role per module, short files and functions.

Both are read from the source with ``ast`` (nothing is imported), so a cycle hidden in a function-level
import counts too: it still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "deepsynth"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 450
ROOT = "deepsynth"

# What each package may import, bottom layer first (docs/architecture.md). A rule covers a module or a
# package and everything under it ("deepsynth.cli" covers deepsynth.cli.*); the most specific rule wins.
# A name in a rule allows that package or module and everything under it. Every module has a rule.
BASE = ("deepsynth.errors", "deepsynth.paths")
MAY_IMPORT = {
    ROOT: (),  # the package's own __init__ (its version): this rule covers that module alone
    "deepsynth.errors": (),
    "deepsynth.paths": ("deepsynth.errors",),
    "deepsynth.data": BASE,
    "deepsynth.models": BASE,
    "deepsynth.training.moe": (*BASE, "deepsynth.models"),
    "deepsynth.publishing": (*BASE, "deepsynth.models"),
    "deepsynth.evaluation": (*BASE, "deepsynth.data", "deepsynth.models"),
    # Of evaluation, training uses the scorers only.
    "deepsynth.training": (*BASE, "deepsynth.data", "deepsynth.models", "deepsynth.publishing",
                           "deepsynth.evaluation.compare", "deepsynth.evaluation.metrics", "deepsynth.evaluation.pages"),
    # The shells on top: drafting labels, the web app, the command line (which also starts the web app).
    "deepsynth.labeling": (*BASE, "deepsynth.data", "deepsynth.models", "deepsynth.evaluation"),
    "deepsynth.web": (*BASE, "deepsynth.data", "deepsynth.models", "deepsynth.training", "deepsynth.publishing",
                      "deepsynth.evaluation"),
    "deepsynth.cli": (*BASE, "deepsynth.data", "deepsynth.models", "deepsynth.training", "deepsynth.publishing",
                      "deepsynth.evaluation", "deepsynth.labeling", "deepsynth.web"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _imported(module: str, path: Path, node: ast.AST, known: set[str]) -> list[str]:
    """The deepsynth modules one import statement names (``from pkg import mod`` names ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative import: resolve against this module's package
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    return found or ([base] if base in known else [])


def import_graph() -> dict[str, set[str]]:
    """Module → the deepsynth modules it imports (top level, functions and TYPE_CHECKING blocks alike)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {name for node in ast.walk(tree) for name in _imported(module, path, node, known)}
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif not state.get(following):
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(graph.get(following, ()))))
    return None


def _package(module: str) -> str | None:
    """The most specific rule of MAY_IMPORT that covers ``module`` (None: no rule does)."""
    ruled = [name for name in MAY_IMPORT if module == name or (name != ROOT and module.startswith(name + "."))]
    return max(ruled, key=len) if ruled else None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from one package into another that MAY_IMPORT does not allow."""
    found = []
    for module, targets in graph.items():
        package = _package(module)
        if package is None:
            continue  # reported by test_every_module_has_a_layer
        for target in sorted(targets):
            allowed = (package, *MAY_IMPORT[package])
            if not any(target == prefix or target.startswith(prefix + ".") for prefix in allowed):
                found.append(f"{module} -> {target}")
    return found


def file_lengths() -> dict[str, int]:
    """Module of src/deepsynth → its source file's length in lines."""
    return {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in _modules().items()}


def function_lengths() -> dict[str, int]:
    """Qualified name of every function and method in src/deepsynth → its length in lines."""
    lengths: dict[str, int] = {}
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}.{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lengths[name] = child.end_lineno - child.lineno + 1
                    visit(child, name)

        visit(tree, module)
    return lengths


def test_the_graph_reader_sees_imports_and_cycles():
    known = {"deepsynth.a", "deepsynth.a.b", "deepsynth.c"}
    path = PACKAGE_ROOT / "a" / "__init__.py"
    tree = ast.parse("from . import b\nfrom deepsynth.c import thing\ndef f():\n    import deepsynth.c\n")
    imported = {name for node in ast.walk(tree) for name in _imported("deepsynth.a", path, node, known)}
    assert imported == {"deepsynth.a.b", "deepsynth.c"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_deepsynth_modules():
    graph = import_graph()
    assert len(graph) > 30 and graph["deepsynth.training.production_trainer"], "the walk found the package"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    assert _package("deepsynth.cli.train") == "deepsynth.cli" and _package("deepsynth") == ROOT
    assert _package("deepsynth.newpackage.module") is None  # the root's rule does not cover the package
    unruled = sorted(module for module in _modules() if _package(module) is None)
    assert not unruled, f"modules no MAY_IMPORT rule covers (give them a layer): {unruled}"


def test_each_package_imports_only_what_its_layer_allows():
    assert layering_violations({"deepsynth.data.x": {"deepsynth.training.config"}}) == [
        "deepsynth.data.x -> deepsynth.training.config"]
    assert layering_violations({"deepsynth.evaluation.x": {"deepsynth.training.config"}}) == [
        "deepsynth.evaluation.x -> deepsynth.training.config"]
    assert layering_violations({"deepsynth.errors": {"deepsynth.paths"}}) == ["deepsynth.errors -> deepsynth.paths"]
    assert layering_violations({"deepsynth.training.moe.a": {"deepsynth.models.b", "deepsynth.training.moe.c"}}) == []
    violations = layering_violations(import_graph())
    assert not violations, f"imports against the layering of docs/architecture.md: {violations}"


def test_every_module_opens_with_a_line_saying_its_role():
    missing = []
    for module, path in _modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if not docstring or not docstring.splitlines()[0].strip():
            missing.append(module)
    assert not missing, f"modules without a docstring whose first line says their role: {missing}"


def test_no_function_over_60_lines():
    too_long = {name: lines for name, lines in function_lengths().items() if lines > MAX_FUNCTION_LINES}
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {too_long}"


def test_no_source_file_over_450_lines():
    lengths = file_lengths()
    assert lengths["deepsynth.data.loading"] > 50, "the walk found the package"
    too_long = {module: lines for module, lines in lengths.items() if lines > MAX_FILE_LINES}
    assert not too_long, f"source files over {MAX_FILE_LINES} lines (split them by role): {too_long}"
