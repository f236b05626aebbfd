"""The `--int8-recipe` names every int8 format defines: the same name means the same intent on each.

Each format's quantizer keeps its own settings per name (ONNX: `quantize.presets.recipe`, on top of a target
preset; TFLite: `quantize.tflite_int8.recipe`), called by that format's export; there is no list of formats
here, only the names the CLI offers. The other names of those registries are single steps, for
`benchmarks.int8_fidelity`.
"""

from __future__ import annotations

CLI_RECIPES = ("toolkit", "plain", "learned")  # defined by every int8 format
DEFAULT_RECIPE = "toolkit"
