"""The package's shape (docs/LAYOUT.md): the core imports nothing above it, each layer only those below, no import
cycles; imports inside functions count."""

import ast
from pathlib import Path

import unlearnkit

PKG = Path(unlearnkit.__file__).parent


def _graph() -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its source (top level or inside functions)}."""
    graph = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        name = ".".join(["unlearnkit", *parts])
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t.startswith("unlearnkit")}
        graph[name] = deps - {"unlearnkit"}  # `from . import world` names the module, not the package
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _reach(graph, start):
    seen, todo = set(), [start]
    while todo:
        for d in graph[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_no_import_cycles():
    graph = _graph()
    cycles = sorted(m for m in graph if m in _reach(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


LAYERS = ("evaluation", "experiments", "pictures", "app")  # bottom to top, above the core


def _layer(module: str) -> int:
    # 0 for the core (the top-level modules and methods/), 1.. for the layers in LAYERS' order; `python -m
    # unlearnkit` (__main__) is the app's
    if module == "unlearnkit.__main__":
        return len(LAYERS)
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.index(part) + 1 if part in LAYERS else 0


def test_the_core_imports_nothing_above_it_and_each_layer_only_those_below():
    graph = _graph()
    core = [m for m in graph if _layer(m) == 0 and m != "unlearnkit"]
    assert {"unlearnkit.train", "unlearnkit.losses", "unlearnkit.methods.base", "unlearnkit.export"} <= set(core)
    upward = sorted(f"{m} -> {d}" for m in graph if m != "unlearnkit" for d in graph[m] if _layer(d) > _layer(m))
    assert not upward, f"imports that point up a layer: {upward}"


def test_the_loop_imports_no_evaluation_and_stays_short():
    graph = _graph()
    assert not {d for d in _reach(graph, "unlearnkit.train") if _layer(d) > 0}
    import inspect

    from unlearnkit import train

    assert len(inspect.getsource(train.train).splitlines()) <= 80


def test_dependencies_point_down():
    graph = _graph()
    training = {"unlearnkit.train", "unlearnkit.context", "unlearnkit.basetrain", "unlearnkit.methods"}
    assert not (_reach(graph, "unlearnkit.evaluation.suite") & training), "evaluation must import nothing that trains"
    assert not (_reach(graph, "unlearnkit.sampling") & (training | {"unlearnkit.models"}))
    assert not (_reach(graph, "unlearnkit.world") & {"unlearnkit.models", "unlearnkit.sampling"})
    assert not any(m.startswith("unlearnkit.methods") for m in _reach(graph, "unlearnkit.losses"))
