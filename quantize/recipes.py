"""One registry of int8 recipes for both backends: the same names mean the same intent on ONNX and TFLite.

`recipe("onnx", name, target=...)` gives ONNX Runtime settings (`QuantizationConfig`, target preset + recipe);
`recipe("tflite", name)` gives the TFLite converter's (`TfliteInt8Config`). The CLI's `--int8-recipe` choices are
`CLI_RECIPES`; the other names are single steps, for `benchmarks.int8_fidelity`.
"""

from __future__ import annotations

from export.errors import ToolkitError
from quantize.presets import DEFAULT_TARGET

BACKENDS = ("onnx", "tflite")
CLI_RECIPES = ("toolkit", "plain", "learned")  # defined for both backends
DEFAULT_RECIPE = "toolkit"


def names(backend: str) -> tuple[str, ...]:
    from quantize.presets import RECIPES as ONNX
    from quantize.tflite_int8 import RECIPES as TFLITE

    return tuple({"onnx": ONNX, "tflite": TFLITE}[backend])


def recipe(backend: str, name: str, target: str = DEFAULT_TARGET, exclude: tuple[str, ...] = (), **overrides):
    """The settings of recipe `name` for `backend` (ONNX: on top of target preset `target`)."""
    if backend == "onnx":
        from quantize.presets import preset, recipe_overrides

        return preset(target, **{**recipe_overrides(name, exclude), **overrides})
    if backend == "tflite":
        from quantize.tflite_int8 import recipe as tflite_recipe

        return tflite_recipe(name)
    raise ToolkitError(f"unknown int8 backend {backend!r} (choose from {', '.join(BACKENDS)})")
