"""The packages import one way only: app -> benchmarks -> quantize -> export -> edge_runtime.

Read from the source with `ast` (function-level imports included, and the `module:function` targets of the
format tables' `Ref`s), so a lazy import cannot hide an upward edge. The failure message names every offending
edge as `module (layer) -> imported (layer)`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_runtime", "export", "quantize", "benchmarks")
# Entry points and the pipeline API: may import anything (lazily, so `--help` stays light).
APP_MODULES = frozenset(
    {
        "export.__main__",
        "export.cli",
        "export.commands",
        "export.formats",  # the CLI's option table (it lists the int8 recipes) and each format's command
        "export.pipeline",
        "benchmarks.__main__",
        "benchmarks.cli",
        "benchmarks.commands",
    }
)
LAYERS = ("edge_runtime", "export", "quantize", "benchmarks", "app")  # bottom to top
# What the device bundle's runtime core may need besides the standard library.
RUNTIME_THIRD_PARTY = frozenset({"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime"})  # LiteRT's older wheel


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((PROJECT / package).rglob("*.py"))}


def layer_of(module: str) -> str:
    return "app" if module in APP_MODULES else module.split(".")[0]


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """Every module `path` imports anywhere in its body; `from pkg import name` counts as `pkg.name` when
    that is a module of the project, else as `pkg`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
        elif _is_ref(node):
            found.add(node.args[0].value.partition(":")[0])
    return found


def _is_ref(node: ast.AST) -> bool:
    """`Ref("module:function")`: a table's lazy import."""
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Ref"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def test_every_project_module_has_a_layer() -> None:
    modules = all_modules()
    assert {layer_of(m) for m in modules} <= set(LAYERS)
    assert set(modules) >= APP_MODULES, APP_MODULES - set(modules)


def test_no_module_imports_a_layer_above_its_own() -> None:
    modules = all_modules()
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for module, path in modules.items():
        for target in sorted(imported_modules(path, module, set(modules))):
            if target.split(".")[0] not in PACKAGES:
                continue
            if rank[layer_of(target)] > rank[layer_of(module)]:
                upward.append(f"{module} ({layer_of(module)}) -> {target} ({layer_of(target)})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_runtime_core_needs_only_numpy_and_the_runtimes() -> None:
    """What the device bundle ships runs where neither torch, onnx, TensorFlow nor rich is installed."""
    modules = all_modules()
    allowed = RUNTIME_THIRD_PARTY | set(sys.stdlib_module_names) | {"__future__", "edge_runtime"}
    foreign = [
        f"{module} -> {target}"
        for module, path in modules.items()
        if layer_of(module) == "edge_runtime"
        for target in sorted(imported_modules(path, module, set(modules)))
        if target.split(".")[0] not in allowed
    ]
    assert not foreign, "the runtime core imports:\n" + "\n".join(foreign)


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    """The contract test itself: a lazy import inside a function is an edge like any other."""
    source = tmp_path / "probe.py"
    source.write_text(
        "def f():\n    from quantize.drift import drift_table\n    import benchmarks.run\n"
        'ROW = Ref("export.pipeline:export_onnx_request")\n'
    )
    found = imported_modules(source, "export.probe", {"quantize.drift", "benchmarks.run"})
    assert {"quantize.drift", "benchmarks.run", "export.pipeline"} <= found
