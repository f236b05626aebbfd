"""The `--int8-recipe` names every int8 format defines: the same name means the same intent on each.

A recipe is a tuple of `quantize.passes` per backend: ONNX's table is `quantize.presets.RECIPES` (applied on
top of a target preset), TFLite's `quantize.tflite_int8.RECIPES`; the format table's `int8_settings` turns
an `quantize.api.Int8Preset` into that backend's settings. Kept here without those tables so that the CLI's
option list imports nothing heavy; `tests/test_int8_api.py` checks every name exists in every backend. The
tables' other names are single steps, for `benchmarks.int8_fidelity`.
"""

from __future__ import annotations

CLI_RECIPES = ("toolkit", "plain", "learned")  # defined by every int8 format
DEFAULT_RECIPE = "toolkit"
