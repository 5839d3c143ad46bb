"""What a module's import graph loads, and what a role's extra installs, read from pyproject.toml."""

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


ROOT = Path(__file__).resolve().parents[2]

# Run as `python -c GRAPH_SCRIPT MODULE...` in a fresh interpreter; prints one JSON object:
#   loaded: top-level third-party packages in sys.modules after the imports;
#   loaded_modules: every module name in sys.modules;
#   imported_distributions: the distributions our own loaded modules import at module level (what runs at
#   import; imports inside functions and under TYPE_CHECKING are left out), canonical names.
GRAPH_SCRIPT = r"""
import ast, importlib, importlib.metadata, json, re, sys
from pathlib import Path

FIRST_PARTY = {"musicrl", "services", "pipelines"}
for name in sys.argv[1:]:
    importlib.import_module(name)
std = set(sys.stdlib_module_names)
providers = importlib.metadata.packages_distributions()

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")

def module_level_imports(body):
    for node in body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                yield from module_level_imports(node.body)
            yield from module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from module_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from module_level_imports(node.body)

def distribution_of(module_name):
    top = module_name.split(".")[0]
    candidates = providers.get(top, [])
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    # a namespace package (google.*): the distribution that holds the loaded module's file
    module = sys.modules.get(module_name)
    path = Path(getattr(module, "__file__", "") or "")
    for dist in candidates:
        for file in importlib.metadata.distribution(dist).files or []:
            if path.parts and Path(file.locate()).resolve() == path.resolve():
                return dist
    return None

imported = set()
for name, module in list(sys.modules.items()):
    file = getattr(module, "__file__", None)
    if name.split(".")[0] not in FIRST_PARTY or not file or not file.endswith(".py"):
        continue
    for target in module_level_imports(ast.parse(Path(file).read_text()).body):
        if target.split(".")[0] in std | FIRST_PARTY:
            continue
        dist = distribution_of(target)
        imported.add(canonical(dist) if dist else "?" + target)

loaded = sorted({m.split(".")[0] for m in sys.modules} - std - FIRST_PARTY - {"__main__"})
print(json.dumps({
    "loaded": [m for m in loaded if not m.startswith("_")],
    "loaded_modules": sorted(sys.modules),
    "imported_distributions": sorted(imported),
}))
"""


def declared_closure(*extras: str) -> set[str]:
    """Canonical names of every distribution ``pip install '.[EXTRAS]'`` installs, by the installed metadata.

    Args:
        extras: Extras of this project (``gateway``, ``serving``, ...); the base dependencies always count.

    Returns:
        The project's dependencies for ``extras`` and, transitively, theirs (markers evaluated for this
        interpreter and the extras asked for).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional: dict[str, list[str]] = project["optional-dependencies"]
    todo = list(project["dependencies"]) + [req for extra in extras for req in optional[extra]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = Requirement(todo.pop())
        name = canonicalize_name(req.name)
        if name == project["name"]:
            todo += [r for extra in req.extras for r in optional[extra]]
            continue
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        wanted = req.extras or {""}
        for line in requires:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": extra}) for extra in wanted):
                todo.append(line)
    return {name for name, _ in seen}
