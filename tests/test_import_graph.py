"""The pack's own modules import each other without a circle, counting imports inside functions too (a circle hidden in
a function still makes the order of imports matter and the two modules one piece of code); the engine never imports
the adapters."""
import ast
import os

from bench.fixtures.pack import ROOT

PACKAGES = ("pixart", "nodes")


def _module_name(path: str) -> str:
    relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def _imports(path: str, module: str) -> set[str]:
    """The pack modules `module` imports anywhere in its file (relative imports resolved)."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(names if not node.module else [target] + names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    files[_module_name(path)] = path
    return {module: {target for target in _imports(path, module) if target in files and target != module}
            for module, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ importing its own modules is how packages work; circles among the modules are the point
    graph = {module: {t for t in targets if not module.startswith(t + ".")} for module, targets in graph.items()}
    assert "pixart.controlnet" in graph and "nodes.dit_model" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_engine_never_imports_the_adapters():
    graph = _graph()
    leaks = {module: sorted(t for t in targets if t.startswith("nodes")) for module, targets in graph.items()
             if module.startswith("pixart")}
    assert not any(leaks.values()), leaks


def test_the_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
