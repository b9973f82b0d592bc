"""The house's shape, checked from the source: no import circle between the package's modules and
no module importing another module's ``_``-prefixed names.

The imports are read with ``ast`` (nothing is imported), so the check sees what a reader sees:
imports inside functions count (they are how circles used to be hidden); for circles, imports
only under ``if TYPE_CHECKING:`` do not, as they never run. A private name is private to its
module even for the type checker, so importing one counts wherever the import stands.

A circle is a set of modules each of which imports (through the others) every other one (a
strongly connected component of the import graph); a failure names its modules and one chain of
imports that closes it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = "hera_stage_ext"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

@dataclass(frozen=True)
class Import:
    importer: str  # the importing module
    module: str  # the imported module (a submodule when the name is one)
    name: str | None  # the name taken from it (``from m import name``), None for a module
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:`` (never run)


def module_names() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (not ``not TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """The ids of the nodes in the body (not the ``else``) of every ``if TYPE_CHECKING:``."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            hidden.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return hidden


def imports(modules: dict[str, Path]) -> Iterator[Import]:
    """Every import of one of the package's modules, anywhere in any module of it."""
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        hidden = _type_checking_nodes(tree)
        package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
        for node in ast.walk(tree):
            type_checking = id(node) in hidden
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        yield Import(importer, alias.name, None, node.lineno, type_checking)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in modules:
                        yield Import(importer, submodule, None, node.lineno, type_checking)
                    else:
                        yield Import(importer, target, alias.name, node.lineno, type_checking)


def _short(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.")


def circles(modules: dict[str, Path], found: list[Import]) -> dict[str, str]:
    """Each import circle, named ``circle: a, b, ...`` (sorted), with one chain that closes it."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], int] = {}
    for imp in found:
        if not imp.type_checking and imp.module in modules and imp.module != imp.importer:
            edges[imp.importer].add(imp.module)
            lines.setdefault((imp.importer, imp.module), imp.line)

    def reachable(start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reach = {name: reachable(name) for name in modules}
    named: dict[str, str] = {}
    for name in modules:
        component = {other for other in reach[name] if name in reach[other]}
        if len(component) < 2:
            continue
        key = "circle: " + ", ".join(sorted(_short(m) for m in component))
        if key in named:
            continue
        # graphlib names one cycle of the component, each module followed by one it imports.
        try:
            TopologicalSorter({m: edges[m] & component for m in component}).prepare()
        except CycleError as error:
            cycle = error.args[1][::-1]
            named[key] = " -> ".join(f"{_short(a)} (line {lines[a, b]})"
                                     for a, b in zip(cycle, cycle[1:])) + f" -> {_short(cycle[-1])}"
    return named


def private_imports(found: list[Import]) -> dict[str, str]:
    """Each import of another module's ``_`` name, named ``private: a imports b._name``, with
    where it is."""
    named: dict[str, str] = {}
    for imp in found:
        if imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
            key = f"private: {_short(imp.importer)} imports {_short(imp.module)}.{imp.name}"
            named.setdefault(key, f"{_short(imp.importer)} line {imp.line}")
    return named


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    modules = module_names()
    return modules, list(imports(modules))


def _none(kind: str, found: dict[str, str]) -> None:
    assert not found, f"{kind}(s):\n" + "\n".join(f"{key}: {where}" for key, where in found.items())


def test_the_check_sees_the_package(graph):
    modules, found = graph
    assert f"{PACKAGE}.jobs.worker" in modules and f"{PACKAGE}.catalogue.catalogue" in modules
    assert len(found) > 200  # the parser reads the imports (a broken one would see none)
    # The check finds what it is for: a circle made of two imports (one inside a function),
    # and a private name imported; one under ``if TYPE_CHECKING:`` is no circle.
    made = [Import(f"{PACKAGE}.a", f"{PACKAGE}.b", None, 1, False),
            Import(f"{PACKAGE}.b", f"{PACKAGE}.a", "_hidden", 9, False),
            Import(f"{PACKAGE}.c", f"{PACKAGE}.a", None, 1, True),
            Import(f"{PACKAGE}.a", f"{PACKAGE}.c", None, 2, False)]
    demo = {f"{PACKAGE}.{n}": ROOT for n in "abc"}
    found_circles = circles(demo, made)
    assert list(found_circles) == ["circle: a, b"]
    assert found_circles["circle: a, b"] in ("a (line 1) -> b (line 9) -> a",
                                            "b (line 9) -> a (line 1) -> b")
    assert private_imports(made) == {"private: b imports a._hidden": "b line 9"}


def test_no_import_circles(graph):
    _none("circle", circles(*graph))


def test_no_module_imports_another_modules_private_names(graph):
    _none("private", private_imports(graph[1]))


#: All that ``jobs/`` may take from ``transfer/``: the name of the peers' environment variable
#: (the launcher keeps the site's secrets out of a user's worker).
JOBS_FROM_TRANSFER = {"jobs.launcher imports transfer.peers.PEERS_ENV"}


def test_the_job_engine_knows_no_kind_of_transfer(graph):
    """``jobs/`` runs the transfer and upload kinds without naming them: the composition roots
    register them (``standard_kinds``), so no module of ``jobs/`` imports ``transfer/`` or
    names one of its modules in a string (an import string is an import all the same)."""
    modules, found = graph
    jobs = f"{PACKAGE}.jobs"
    transfer = f"{PACKAGE}.transfer"
    imported = {
        f"{_short(imp.importer)} imports {_short(imp.module)}"
        + (f".{imp.name}" if imp.name else "")
        for imp in found
        if (imp.importer == jobs or imp.importer.startswith(jobs + "."))
        and (imp.module == transfer or imp.module.startswith(transfer + "."))}
    assert imported <= JOBS_FROM_TRANSFER, sorted(imported - JOBS_FROM_TRANSFER)
    # The worker process's ``main`` is a composition root: the one module of jobs/ that may
    # reach the kinds through the standard list.
    rooted = {_short(imp.importer) for imp in found if imp.module == f"{PACKAGE}.standard_kinds"
              and imp.importer.startswith(jobs + ".")}
    assert rooted <= {"jobs.worker"}, rooted
    named = sorted(
        f"{_short(name)} line {node.lineno}: {node.value!r}"
        for name, path in modules.items() if name == jobs or name.startswith(jobs + ".")
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and node.value.startswith(transfer))
    assert not named, named


#: The generic parts of ``jobs/``: the job's life cycle, its run, the item queue and the job
#: stores. They call a kind only through ``contract.JobKind``'s hooks.
GENERIC_JOB_MODULES = ("jobs.engine", "jobs.run", "jobs.items", "jobs.store", "jobs.http_store",
                       "jobs.kinds", "jobs.contract")
#: The kinds' own modules in ``jobs/``.
KIND_MODULES = ("jobs.stage_kind", "jobs.cold_kind", "jobs.recall")


def test_the_job_engine_names_no_kinds_module(graph):
    """Cancel and retry reach a kind's bookkeeping (a stage job's recalled copies, say) through
    its hooks (``after_cancel``, ``before_retry``, ``requeued``), never by importing the kind's
    module: a new kind needs no change to the engine. Imports for type checking count too."""
    modules, found = graph
    named = sorted(
        f"{_short(imp.importer)} line {imp.line} imports {_short(imp.module)}"
        for imp in found
        if _short(imp.importer) in GENERIC_JOB_MODULES and _short(imp.module) in KIND_MODULES)
    assert all(f"{PACKAGE}.{m}" in modules for m in GENERIC_JOB_MODULES + KIND_MODULES)
    assert not named, named
