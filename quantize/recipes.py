"""The `--int8-recipe` names every int8 format defines: the same name means the same intent on each.

A recipe is a tuple of `quantize.passes` per backend: ONNX's table is `quantize.presets.RECIPES` (applied on
top of a target preset), TFLite's `quantize.tflite_int8.RECIPES`; the format table's `int8_settings` turns
an `quantize.api.Int8Preset` into that backend's settings. Kept here without those tables so that the CLI's
option list imports nothing heavy; `tests/test_int8_api.py` checks every name exists in every backend. The
tables' other names are single steps, for `benchmarks.int8_fidelity`.
"""

from __future__ import annotations

from edge_runtime.formats import FORMATS

CLI_RECIPES = ("toolkit", "plain", "learned", "learned-weights")  # defined by every int8 format
# defined by one format only; any other refuses them in one line before any work
FORMAT_RECIPES: dict[str, tuple[str, ...]] = {f.name: f.own_int8_recipes for f in FORMATS if f.own_int8_recipes}
RECIPE_CHOICES = (*CLI_RECIPES, *(name for names in FORMAT_RECIPES.values() for name in names))


def check_recipe(format_name: str, name: str) -> None:
    """Refuse a recipe `format_name` does not define, naming the ones it does (a ToolkitError: exit 2)."""
    offered = (*CLI_RECIPES, *FORMAT_RECIPES.get(format_name, ()))
    if name not in offered:
        from export.errors import ToolkitError

        owners = [fmt for fmt, names in FORMAT_RECIPES.items() if name in names]
        only = f" is {', '.join(owners)}-only" if owners else " is unknown"
        raise ToolkitError(f"--int8-recipe {name}{only}; {format_name} offers {', '.join(offered)}")


# The default: `learned` (GPTQ weight rounding) now that its fit is cheap enough (ONNX command 52-56 s against a
# 60 s budget, TFLite ~100 s against 180, 2 cores of an AVX2 EPYC); five draws, mean / worst agreement: ONNX
# 97.90 / 97.75% (toolkit) -> 98.95 / 98.50%, TFLite 98.50 / 97.75% -> 99.15 / 98.25% (docs/int8-fidelity.md).
# `toolkit` is the same recipe without the fit (and without the wider 5x5 input ranges, chosen with the fit).
DEFAULT_RECIPE = "learned"
