"""The import rule, checked on every module of src/tinylab (imports parsed with ast, those
inside functions included): a module imports only from its own floor or the floors below,

    bottom (errors, files, layout, provenance, config, notebook, cache) < model < data < train
    < evaluate < analysis < pipeline (and sweep) < cluster < cli

so nothing below imports pipeline or cli, and analysis reads runs through tinylab.layout, never
through the trainer."""

from __future__ import annotations

from tinylab.provenance import SourceTree, imports_in

TREE = SourceTree()  # the import graph that code records use too
FLOORS = [
    {"errors", "files", "layout", "provenance", "config", "notebook", "cache"},
    {"model", "release"},
    {"data"},
    {"train"},
    {"evaluate"},
    {"analysis"},
    {"pipeline", "sweep"},
    {"cluster"},
    {"cli"},
]
FORBIDDEN = {("analysis", "train")}  # allowed by the floors, refused all the same


def component(module: str) -> str:
    """tinylab.data.pack -> data; tinylab (the package itself) -> ''."""
    return module.split(".")[1] if "." in module else ""


def floor(module: str) -> int | None:
    return next((i for i, names in enumerate(FLOORS) if component(module) in names), None)


def violations(edges: set[tuple[str, str]]) -> list[str]:
    """The edges (importer, imported) that break the rule, as messages naming both."""
    found = []
    for importer, imported in sorted(edges):
        if component(imported) in ("", component(importer)):
            continue
        low, high = floor(importer), floor(imported)
        if low is None or high is None:
            found.append(f"{importer} imports {imported}: give every module a floor in FLOORS")
        elif high > low:
            found.append(f"{importer} imports {imported}: an upward import (floor {low} < {high})")
        elif (component(importer), component(imported)) in FORBIDDEN:
            found.append(f"{importer} imports {imported}: {component(importer)} never imports "
                         f"{component(imported)}")  # fmt: skip
    return found


def edges_of_src() -> set[tuple[str, str]]:
    return TREE.edges()


def test_every_module_has_a_floor() -> None:
    unplaced = {module for module in TREE.files if floor(module) is None}
    assert unplaced == {"tinylab"}, f"modules outside FLOORS: {sorted(unplaced - {'tinylab'})}"


def test_imports_only_go_down() -> None:
    upward = [v for v in violations(edges_of_src()) if "never imports" not in v]
    assert not upward, "\n".join(upward)


def test_analysis_never_imports_train() -> None:
    forbidden = [v for v in violations(edges_of_src()) if "never imports" in v]
    assert not forbidden, "\n".join(forbidden)


def test_a_violation_names_the_importer_and_the_imported_module() -> None:
    edges = {
        ("tinylab.data.pack", "tinylab.pipeline"),
        ("tinylab.analysis.runs", "tinylab.train.loop"),
        ("tinylab.cli", "tinylab.data"),
        ("tinylab.train.loop", "tinylab.train.metrics"),
    }
    assert violations(edges) == [
        "tinylab.analysis.runs imports tinylab.train.loop: analysis never imports train",
        "tinylab.data.pack imports tinylab.pipeline: an upward import (floor 2 < 6)",
    ]


def test_imports_inside_functions_and_relative_ones_are_seen() -> None:
    cli = TREE.imports("tinylab.cli")
    assert {"tinylab.cluster.plan", "tinylab.pipeline", "tinylab.train"} <= cli  # in functions
    source = "def f():\n    from . import cache\n    from ..pipeline import x\n    import os\n"
    assert imports_in(source, package="tinylab.data") == {
        "tinylab.data",
        "tinylab.data.cache",  # a module or a name: SourceTree keeps the modules
        "tinylab.pipeline",
        "tinylab.pipeline.x",
        "os",
    }
    assert imports_in("from tinylab import cluster, model", package="tinylab") == {
        "tinylab",
        "tinylab.cluster",
        "tinylab.model",
    }
    assert {"tinylab.train.loop", "tinylab.layout"} <= TREE.imports("tinylab.train.launch")
