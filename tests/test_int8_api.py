"""The one int8 entry point (`quantize.api`): recipes as named passes, one preset object for every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_runtime import formats
from export.errors import ToolkitError
from quantize.api import Int8Preset, quantize
from quantize.passes import PASSES, apply_passes
from quantize.presets import FLOAT_STEM, ONNX_PASSES, QuantizationConfig
from quantize.presets import RECIPES as ONNX_RECIPES
from quantize.recipes import CLI_RECIPES
from quantize.tflite_int8 import RECIPES as TFLITE_RECIPES
from quantize.tflite_int8 import TFLITE_PASSES, TfliteInt8Config

INT8_FORMATS = [row.name for row in formats.FORMATS if "int8" in row.quantize]


def test_every_cli_recipe_exists_in_every_int8_format() -> None:
    for name in INT8_FORMATS:
        for recipe in CLI_RECIPES:
            assert Int8Preset(name, recipe).settings() is not None, (name, recipe)


def test_backends_only_implement_named_passes() -> None:
    """One vocabulary: a backend cannot invent a pass the others cannot name, and every recipe is made of
    passes its backend implements."""
    for implementations, recipes in ((ONNX_PASSES, ONNX_RECIPES), (TFLITE_PASSES, TFLITE_RECIPES)):
        assert set(implementations) <= set(PASSES)
        for passes in recipes.values():
            assert set(passes) <= set(implementations), passes


def test_recipes_build_the_settings_they_name() -> None:
    """The pass tables reproduce the settings the recipes had as switches (so the artifacts are unchanged)."""
    onnx_learned = Int8Preset("onnx", "learned").settings()
    assert onnx_learned.exclude == (*FLOAT_STEM, "avgpool")
    assert (onnx_learned.rounding, onnx_learned.shared_concat_ranges) == ("gptq", True)
    assert onnx_learned.float_inputs == onnx_learned.float_outputs == ("Gemm",)
    assert onnx_learned.to_dict()["passes"] == list(ONNX_RECIPES["learned"])
    assert Int8Preset("onnx").settings() == QuantizationConfig.arm64(calibration="minmax", recipe="toolkit")
    assert Int8Preset("tflite").settings() == TfliteInt8Config()
    assert Int8Preset("tflite", "plain").settings() == TfliteInt8Config.plain()
    assert Int8Preset("tflite", "learned").settings() == TfliteInt8Config(rounding="gptq", float_logits=True)
    assert Int8Preset("tflite", "learned").settings().to_dict()["passes"] == list(TFLITE_RECIPES["learned"])


def test_user_excludes_join_the_recipe_s() -> None:
    config = Int8Preset("onnx", "learned", "x86-vnni", exclude=("inception3a.branch1.conv",)).settings()
    assert config.exclude == (*FLOAT_STEM, "avgpool", "inception3a.branch1.conv")
    assert config.target == "x86-vnni" and config.activation_type == "uint8"


def test_apply_passes_refuses_an_unknown_pass() -> None:
    with pytest.raises(KeyError, match="unknown int8 pass"):
        apply_passes(TfliteInt8Config.plain(), ["no-such-pass"], TFLITE_PASSES)


def test_unknown_names_are_one_line_errors() -> None:
    with pytest.raises(ToolkitError, match="unknown --int8-recipe 'nope'"):
        Int8Preset("onnx", "nope").settings()
    with pytest.raises(ToolkitError, match="unknown --int8-recipe 'nope'"):
        Int8Preset("tflite", "nope").settings()
    with pytest.raises(ToolkitError, match="unknown --target"):
        Int8Preset("onnx", target="sparc").settings()
    with pytest.raises(ToolkitError, match="no int8 for format"):
        Int8Preset("coreml").settings()


def test_quantize_runs_the_onnx_backend_on_a_real_graph(tmp_path: Path) -> None:
    """The entry point dispatches through the format table to ONNX Runtime's real quantizer: the file it
    writes holds int8 weights and its sidecar records the recipe's passes."""
    from onnx import TensorProto, helper, numpy_helper

    from quantize.calibration import ArraySource

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
            helper.make_node("Flatten", ["p"], ["logits"], name="flat"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    fp32 = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(fp32))
    images = rng.normal(size=(8, 3, 8, 8)).astype(np.float32)
    result = quantize(fp32, ArraySource(images, origin="test"), Int8Preset("onnx", "plain"))
    model = onnx.load(str(result.path))
    assert any(t.data_type == TensorProto.INT8 for t in model.graph.initializer)
    assert result.info["quantization"]["recipe"] == "plain" and result.info["quantization"]["passes"] == []
