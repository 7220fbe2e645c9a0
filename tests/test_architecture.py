"""The dependency rules of the architecture, read off the source with `ast`.

Every import counts: at module level or inside a function, `import a.b`, `from a import b`,
relative ones, and `importlib.import_module("a.b")` with a literal name. Module names come from
pyproject's package-dir mapping (`medical/` is `domainvlm.medical`), so the rules follow the
packaging. "Imports" below is transitive through our own modules: the core must not reach
medical through a helper that does.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# Packages that live in their own folders (pyproject's package-dir) and sit above the core.
EDGES = ("domainvlm.medical", "domainvlm.adapters", "domainvlm.ros")
WORLDS = ("domainvlm.nano.shapes_world", "domainvlm.nano.findings_world",
          "domainvlm.nano.tabletop_world")
# Who in the core may import a synthetic world itself: the nano models that learn from them
# (the nano VLM, the nano CLIP), the command line's `synth-data` and the robot demo. Everyone
# else goes through `domainvlm.nano`'s API.
WORLD_IMPORTERS = ("domainvlm.nano", "domainvlm.cli", "domainvlm.nano.clip",
                   "domainvlm.detection.demo")


def package_folders() -> dict[str, Path]:
    """Import name -> folder, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: ROOT / folder for name, folder in config["package-dir"].items()}


def module_files() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in package_folders().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if any(part.startswith(".") or part == "__pycache__" for part in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            # a folder of another mapped package inside this one (none today) is its own
            found.setdefault(name, path)
    return found


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name `source` imports (for `from a import b`: both `a` and `a.b`)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def _is_import_call(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports directly (a name that is not a module, such as a
    function, counts as its module)."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path.read_text(encoding="utf-8"), module,
                                   path.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


GRAPH = import_graph()


def chain(start: str, forbidden: tuple[str, ...]) -> list[str] | None:
    """The shortest import chain from `start` to a module under `forbidden`, or None."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target in sorted(GRAPH[module]):
            if target in paths:
                continue
            paths[target] = [*paths[module], target]
            if within(target, forbidden):
                return paths[target]
            queue.append(target)
    return None


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


CORE = sorted(m for m in GRAPH if not within(m, EDGES))


def test_the_reader_sees_every_kind_of_import():
    source = (
        "import domainvlm.a.b\n"
        "from domainvlm.c import d\n"
        "from . import sibling\n"
        "from ..up import thing\n"
        "def later():\n"
        "    import importlib\n"
        "    from domainvlm.e import f\n"
        "    importlib.import_module('domainvlm.g')\n"
        "    __import__('domainvlm.h')\n"
    )
    names = imported_names(source, "domainvlm.pkg.mod", is_package=False)
    assert names >= {"domainvlm.a.b", "domainvlm.c", "domainvlm.c.d", "domainvlm.pkg",
                     "domainvlm.pkg.sibling", "domainvlm.up", "domainvlm.up.thing",
                     "domainvlm.e.f", "domainvlm.g", "domainvlm.h"}
    assert "domainvlm.pkg.up" not in names


def test_every_package_of_the_distribution_is_read():
    packages = {m for m, path in module_files().items() if path.name == "__init__.py"}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert packages == set(config["packages"])  # a package missing from pyproject fails here
    for name in ("domainvlm.cli", "domainvlm.medical.deid", "domainvlm.nano.shapes_world",
                 "domainvlm.evaluation.run", "domainvlm.train.loop"):
        assert name in GRAPH


def violations(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    chains = [chain(module, forbidden) for module in modules]
    return [" -> ".join(found) for found in chains if found]


def test_the_core_does_not_import_medical_adapters_or_ros():
    assert violations(CORE, EDGES) == []


def test_evaluation_does_not_import_training():
    evaluation = [m for m in CORE if within(m, ("domainvlm.evaluation",))]
    assert evaluation
    assert violations(evaluation, ("domainvlm.train",)) == []


def test_only_the_nano_model_and_the_command_line_import_a_synthetic_world():
    found = {module: sorted(t for t in GRAPH[module] if within(t, WORLDS))
             for module in CORE if not within(module, WORLD_IMPORTERS)}
    assert {module: worlds for module, worlds in found.items() if worlds} == {}
