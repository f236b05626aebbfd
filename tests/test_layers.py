"""The packages import one way only: app -> benchmarks -> quantize -> export -> edge_runtime.

Read from the source with `ast` (function-level imports included), so a lazy import cannot hide an upward
edge. A table's `field=Ref("module:function")` is an import of that module by every module that reads
`.field` (the caller resolves it), not by the table that holds it: the format table sits in the runtime core
yet names export functions, and the check still fails if a layer below the function's reads that field. A
bare `Ref(...)` counts against the module it is in. Failures name each edge as `module (layer) -> imported (layer)`.
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
        "export.formats",  # the CLI's option table (it lists the int8 recipes and target presets)
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


def ref_fields(paths: dict[str, Path]) -> dict[str, set[str]]:
    """Field name -> the modules its `Ref`s name, for every `field=Ref("module:function")` in the project."""
    fields: dict[str, set[str]] = {}
    for path in paths.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.keyword) and node.arg and _is_ref(node.value):
                fields.setdefault(node.arg, set()).add(_ref_module(node.value))
    return fields


def imported_modules(path: Path, module: str, known: set[str], fields: dict[str, set[str]] | None = None) -> set[str]:
    """Every module `path` imports anywhere in its body; `from pkg import name` counts as `pkg.name` when
    that is a module of the project, else as `pkg`; reading a Ref field (`row.counter`) imports its targets."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    fields = fields or {}
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    held = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg and _is_ref(n.value)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
        elif isinstance(node, ast.Attribute) and node.attr in fields:
            found.update(fields[node.attr])
        elif _is_ref(node) and id(node) not in held:
            found.add(_ref_module(node))
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


def _ref_module(node: ast.Call) -> str:
    return node.args[0].value.partition(":")[0]


def test_every_project_module_has_a_layer() -> None:
    modules = all_modules()
    assert {layer_of(m) for m in modules} <= set(LAYERS)
    assert set(modules) >= APP_MODULES, APP_MODULES - set(modules)


def upward_imports(modules: dict[str, Path]) -> list[str]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    fields = ref_fields(modules)
    upward = []
    for module, path in modules.items():
        for target in sorted(imported_modules(path, module, set(modules), fields)):
            if target.split(".")[0] not in PACKAGES:
                continue
            if rank[layer_of(target)] > rank[layer_of(module)]:
                upward.append(f"{module} ({layer_of(module)}) -> {target} ({layer_of(target)})")
    return upward


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = upward_imports(all_modules())
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_runtime_core_needs_only_numpy_and_the_runtimes() -> None:
    """What the device bundle ships runs where neither torch, onnx, TensorFlow nor rich is installed."""
    modules = all_modules()
    fields = ref_fields(modules)
    # A bare sibling name (`from hostinfo import ...`) is the bundle's layout: the same runtime-core file beside it
    siblings = {module.split(".")[-1] for module in modules if layer_of(module) == "edge_runtime"}
    allowed = RUNTIME_THIRD_PARTY | set(sys.stdlib_module_names) | {"__future__", "edge_runtime"} | siblings
    foreign = [
        f"{module} -> {target}"
        for module, path in modules.items()
        if layer_of(module) == "edge_runtime"
        for target in sorted(imported_modules(path, module, set(modules), fields))
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


def test_a_ref_is_imported_by_whoever_reads_its_field(tmp_path: Path) -> None:
    """The table holding `counter=Ref("export...")` in the runtime core is fine; a runtime-core module reading
    `.counter` is an upward edge, and so is a bare Ref there."""
    (tmp_path / "edge_runtime").mkdir()
    (tmp_path / "export").mkdir()
    table = tmp_path / "edge_runtime" / "table.py"
    table.write_text('ROWS = (Row(counter=Ref("export.inspect:count")),)\n')
    export_side = tmp_path / "export" / "inspect.py"
    export_side.write_text("def count_file(row, path):\n    return row.counter(path)\n")
    modules = {"edge_runtime.table": table, "export.inspect": export_side}
    assert upward_imports(modules) == []
    reader = tmp_path / "edge_runtime" / "reader.py"
    reader.write_text("def peek(row, path):\n    return row.counter(path)\n")
    bare = tmp_path / "edge_runtime" / "bare.py"
    bare.write_text('LOADER = Ref("export.inspect:count")\n')
    modules |= {"edge_runtime.reader": reader, "edge_runtime.bare": bare}
    assert sorted(upward_imports(modules)) == [
        "edge_runtime.bare (edge_runtime) -> export.inspect (export)",
        "edge_runtime.reader (edge_runtime) -> export.inspect (export)",
    ]
