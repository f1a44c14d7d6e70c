"""The package's architecture, checked from its imports: every import points down the layers
(data < backbones < methods < tuning < engine < runs/bench/analysis/... < cli), no module
imports itself back through a cycle, and no file unpickles what it loads."""

from __future__ import annotations

import ast
from pathlib import Path

import snftune

PACKAGE = Path(snftune.__file__).parent
LAYERS = {
    "atomic": 0,
    "errors": 0,
    "inputs": 0,
    "suggest": 0,
    "data": 1,
    "backbones": 2,
    "methods": 3,
    "tuning": 4,
    "engine": 5,
    "provenance": 6,
    "runs": 6,
    "selection": 7,
    "pretraining": 7,
    "bench": 7,
    "analysis": 7,
    "nas": 7,
    "serving": 7,
    "cli": 8,
    "__main__": 9,
}
"""Higher numbers may import lower ones. ``runs`` sits below the whole-job modules that build on it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The snftune modules ``path`` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{alias.name}" for alias in node.names]
            else:
                target, names = node.module or "", [f"{node.module}.{alias.name}" for alias in node.names]
            if target.startswith("snftune"):
                found.add(target)
                found.update(n for n in names if _is_module(n))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("snftune"))
    return found


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_layer_is_known():
    assert {layer_of(m) for m in graph()} - {"__init__"} <= set(LAYERS)


def test_every_import_points_down_the_layers():
    upward = []
    for module, targets in graph().items():
        if module == "snftune":
            continue  # the package's public face re-exports from the layers
        for target in targets:
            if target == "snftune" or module.startswith(target + "."):
                continue
            source_layer, target_layer = layer_of(module), layer_of(target)
            if LAYERS[target_layer] > LAYERS[source_layer]:
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_no_import_cycles_between_modules():
    edges = graph()
    modules = set(edges)
    resolved = {
        m: {t for t in ts if t in modules and t != m and t != "snftune" and not m.startswith(t + ".")}
        for m, ts in edges.items()
    }
    cycles = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for target in resolved[module]:
            if target in path:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in done:
                visit(target, path + [target], done)
        done.add(module)

    done: set[str] = set()
    for module in sorted(resolved):
        visit(module, [module], done)
    assert not cycles, cycles[:5]


def test_no_file_is_loaded_with_pickle():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load":
                owner = getattr(node.func.value, "id", None)
                if owner == "pickle":
                    offenders.append(f"{path.name}:{node.lineno} pickle.load")
                if owner == "torch":
                    keywords = {k.arg: k.value for k in node.keywords}
                    safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value
                    if not safe:
                        offenders.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
    assert not offenders, offenders
