"""The library's import structure: no import cycles between overopt's modules, no private names across packages.

Every module of src/overopt is parsed with `ast` (nothing is imported), its imports of overopt modules collected,
at module level and inside functions alike (a lazy import still ties the two modules together), and:

- the module graph has no cycle. `from overopt.x import y` is an edge to the module overopt.x.y when that is a
  module, else to overopt.x (the package's `__init__` when overopt.x is a package); `import overopt.x.y` is an
  edge to overopt.x.y. Importing a module runs its packages' `__init__` first: overopt.a.b imported from outside
  overopt.a is an edge to overopt.a too (from inside it is not: a package re-exporting its modules would
  otherwise be a cycle by construction). Imports under `if TYPE_CHECKING:` run never and are left out.
- no `_private` name (a function, a class, a module, or an attribute read off an imported module) is taken from
  another top-level module or another subpackage: overopt.ops.kl may use overopt.ops._checks, overopt.compare may
  not use overopt.config._read_yaml.
- the scripts (benchmarks/, experiments/, tools/, examples/) take no `_private` name from overopt at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SCRIPTS = ("benchmarks", "experiments", "tools", "examples")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "overopt").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(tree: ast.AST):
    """ast.walk without the bodies of `if TYPE_CHECKING:` (their `else:` is walked)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _type_checking(node):
            todo.extend([node.test, *node.orelse])
        else:
            todo.extend(ast.iter_child_nodes(node))


def _imports(module: str | None, tree: ast.AST) -> list[tuple[str, str | None, int]]:
    """(target module, private name used from it or None, line) for every overopt import in `tree`."""
    out: list[tuple[str, str | None, int]] = []
    aliases: dict[str, str] = {}  # local name -> overopt module it is bound to
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "overopt" or alias.name.startswith("overopt."):
                    out.append((alias.name, None, node.lineno))
                    for part in alias.name.split("."):
                        if _private(part):
                            out.append((alias.name, part, node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node) if module else node.module
            if not base or not (base == "overopt" or base.startswith("overopt.")):
                continue
            for part in base.split("."):
                if _private(part):
                    out.append((base, part, node.lineno))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in MODULES else base
                out.append((target, None, node.lineno))
                if _private(alias.name):
                    out.append((base, alias.name, node.lineno))
                if target == sub:
                    aliases[alias.asname or alias.name] = sub
    for node in _walk(tree):  # attributes read off an imported module: `pipeline._stage_fingerprints`
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                if value.id in aliases:
                    name = ".".join([aliases[value.id], *reversed(chain)])
                elif value.id == "overopt":
                    name = ".".join(["overopt", *reversed(chain)])
                else:
                    continue
                out.append((name, node.attr, node.lineno))
    return out


def _owner(module: str) -> str:
    """The package whose insides may share private names with `module`: its subpackage, or itself at top level."""
    if _is_package(module):
        return module
    parts = module.split(".")
    return module if len(parts) <= 2 else ".".join(parts[:-1])


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    private: list[str] = []
    for name, path in MODULES.items():
        for target, used, line in _imports(name, ast.parse(path.read_text(), str(path))):
            if used is None:
                parts = target.split(".")
                for i in range(2, len(parts) + 1):  # the packages on the way, then the module itself
                    step = ".".join(parts[:i])
                    inside = name == step or name.startswith(step + ".")
                    if step in MODULES and not inside and (step == target or _is_package(step)):
                        graph[name].add(step)
                continue
            owner = _owner(target if target in MODULES else target.rsplit(".", 1)[0])
            if not (name == owner or name.startswith(owner + ".")):
                private.append(f"{path.relative_to(ROOT)}:{line}: {used} from {target}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_one_cycle(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def test_the_checker_sees_imports():
    graph, _ = _graph()
    assert "overopt.cli" in graph and graph["overopt.cli"], "overopt.cli imports overopt modules"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    tree = ast.parse("from overopt.ops import _checks\nimport overopt.pipeline as p\np._x()\n")
    used = {(t, u) for t, u, _ in _imports("overopt.x", tree) if u}
    assert used == {("overopt.ops", "_checks"), ("overopt.pipeline", "_x")}


def test_no_import_cycles():
    graph, _ = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_private_names_across_packages():
    _, private = _graph()
    assert not private, "private names imported across packages:\n" + "\n".join(private)


def test_scripts_take_no_private_names_from_overopt():
    found = []
    for folder in SCRIPTS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for target, used, line in _imports(None, ast.parse(path.read_text(), str(path))):
                if used is not None:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {used} from {target}")
    assert not found, "scripts importing private names from overopt:\n" + "\n".join(found)
