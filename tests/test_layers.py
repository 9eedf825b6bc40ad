"""The layer rule (fma_genres/__init__.py): every import goes down the layer order or within a layer, no
import cycle, no import of an entry point. Imports are read with ast, function-level ones too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first; a module is in the layer of the longest prefix of its name listed here.
LAYERS = {
    "fma_genres.runtime": 0,
    "utils": 1, "fma_genres.data": 1, "fma_genres.multilabel": 1, "fma_genres.metrics": 1, "fma_genres.tasks": 1,
    "fma_genres.report_figures": 1,
    "models": 2, "models_utils": 2, "fma_genres.encoders": 2,
    "train": 3, "test": 3, "fma_genres.training": 3, "fma_genres.inference": 3,
    "fma_genres.reporting": 4, "fma_genres.experiments": 4,
    "fma_genres.configurator": 5,
    "main": 6, "pre_trained_models": 6, "experiments": 6, "app": 6,
}
ENTRY_POINTS = {"main", "pre_trained_models", "experiments", "app"}


def project_modules(root=ROOT):
    """{module name: source} of the top-level modules and the package's."""
    files = [*root.glob("*.py"), *(root / "fma_genres").rglob("*.py")]
    names = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f for f in files}
    return {name: f.read_text() for name, f in names.items()}


def layer(module, layers):
    owners = [prefix for prefix in layers if module == prefix or module.startswith(prefix + ".")]
    return layers[max(owners, key=len)] if owners else None


def imports(source, package, modules):
    """The project modules ``source`` imports (anywhere in it): `import x`, `from x import y` (x.y when
    that is a module), relative imports resolved against ``package``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {name for name in found if name in modules}


def violations(modules, layers=LAYERS, entry_points=ENTRY_POINTS):
    """Lines naming each import against the layer order, of an entry point, or in a cycle."""
    graph = {name: imports(source, name if source and name.count(".") == 0 else name.rpartition(".")[0], modules)
             for name, source in modules.items()}
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets - {module}):
            if target in entry_points:
                problems.append(f"{module} imports the entry point {target}")
            elif layer(module, layers) is None or layer(target, layers) is None:
                problems.append(f"{module} -> {target}: a module in no layer (add it to LAYERS)")
            elif layer(target, layers) > layer(module, layers):
                problems.append(f"{module} (layer {layer(module, layers)}) imports {target} (layer "
                                f"{layer(target, layers)}), a higher layer")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph):
    """One cycle per strongly connected group of modules that import each other (depth-first search)."""
    found, done = [], set()

    def visit(module, path):
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycle = path[path.index(target):] + [target]
                if not any(set(cycle) == set(c) for c in found):
                    found.append(cycle)
            elif target not in done:
                visit(target, path + [target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


def test_every_import_follows_the_layer_order():
    modules = project_modules()
    assert {"main", "utils", "fma_genres.runtime.errors", "fma_genres.data.fma"} <= set(modules)
    assert violations(modules) == []


def test_every_module_has_a_layer():
    unplaced = [name for name in project_modules() if layer(name, LAYERS) is None and not name.endswith("__init__")]
    assert unplaced in ([], ["fma_genres"]), unplaced


@pytest.mark.parametrize("sources, expected", [
    ({"low": "import high\n", "high": ""}, "low (layer 0) imports high (layer 1), a higher layer"),
    ({"low": "def f():\n    from high import x\n", "high": "x = 1\n"}, "low (layer 0) imports high (layer 1)"),
    ({"high": "import entry\n", "entry": ""}, "high imports the entry point entry"),
    ({"low": "import low2\n", "low2": "def f():\n    import low\n"}, "import cycle: low -> low2 -> low"),
])
def test_the_checker_catches_each_violation(sources, expected):
    layers = {"low": 0, "low2": 0, "high": 1, "entry": 2}
    problems = violations(sources, layers, entry_points={"entry"})
    assert any(expected in problem for problem in problems), problems
    clean = {name: "" for name in sources}
    assert violations(clean, layers, entry_points={"entry"}) == []
