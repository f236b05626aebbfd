"""The one int8 entry point (`quantize.api`): recipes as named passes, one preset object for every backend."""

from __future__ import annotations

import json
from dataclasses import replace
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
from quantize.recipes import CLI_RECIPES, FORMAT_RECIPES, check_recipe
from quantize.tflite_int8 import RECIPES as TFLITE_RECIPES
from quantize.tflite_int8 import TFLITE_PASSES, TfliteInt8Config

INT8_FORMATS = [row.name for row in formats.FORMATS if "int8" in row.quantize]


def test_every_cli_recipe_exists_in_every_int8_format() -> None:
    for name in INT8_FORMATS:
        for recipe in CLI_RECIPES:
            assert Int8Preset(name, recipe).settings() is not None, (name, recipe)


def test_format_only_recipes_exist_there_and_are_refused_elsewhere() -> None:
    for owner, names in FORMAT_RECIPES.items():
        for recipe in names:
            assert Int8Preset(owner, recipe).settings() is not None
            check_recipe(owner, recipe)
            for other in set(INT8_FORMATS) - {owner}:
                with pytest.raises(ToolkitError, match=f"--int8-recipe {recipe} is {owner}-only; {other} offers"):
                    check_recipe(other, recipe)


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
    assert onnx_learned.exclude == ("avgpool",) and onnx_learned.float_activation_nodes == FLOAT_STEM
    assert (onnx_learned.rounding, onnx_learned.shared_concat_ranges) == ("gptq", True)
    assert onnx_learned.float_inputs == onnx_learned.float_outputs == ("Gemm",)
    assert onnx_learned.to_dict()["passes"] == list(ONNX_RECIPES["learned"])
    assert onnx_learned.wide_5x5_inputs == 1.5
    # the default is `learned`; `toolkit` = its passes without the GPTQ fit and the 5x5-reduce ranges as calibrated
    assert Int8Preset("onnx").settings() == onnx_learned
    assert Int8Preset("tflite").settings() == Int8Preset("tflite", "learned").settings()
    onnx_default = Int8Preset("onnx", "toolkit").settings()
    toolkit = replace(onnx_learned, rounding="nearest", wide_5x5_inputs=1.0)
    assert onnx_default == replace(toolkit, recipe="toolkit", passes=ONNX_RECIPES["toolkit"])
    assert Int8Preset("onnx", "plain").settings() == QuantizationConfig.arm64(calibration="minmax", recipe="plain")
    assert Int8Preset("tflite", "toolkit").settings() == TfliteInt8Config(float_logits=True)  # + hybrid classifier
    assert Int8Preset("tflite", "plain").settings() == TfliteInt8Config.plain()
    learned = TfliteInt8Config(rounding="gptq", float_logits=True, wide_5x5_inputs=1.5)
    assert Int8Preset("tflite", "learned").settings() == learned
    assert Int8Preset("tflite", "learned").settings().to_dict()["passes"] == list(TFLITE_RECIPES["learned"])
    # weights only: no int8 kernel runs, so not even AVX2's preset needs 7-bit weights
    weights = Int8Preset("onnx", "learned-weights", "x86-avx2").settings()
    learned_avx2 = Int8Preset("onnx", "learned", "x86-avx2").settings()
    named = {"recipe": "learned-weights", "passes": ONNX_RECIPES["learned-weights"]}
    assert weights == replace(learned_avx2, weights_only=True, reduce_range=False, **named)
    assert Int8Preset("tflite", "learned-weights").settings() == TfliteInt8Config(rounding="gptq", weights_only=True)


def test_user_excludes_join_the_recipe_s() -> None:
    config = Int8Preset("onnx", "learned-float-conv1", "x86-vnni", exclude=("inception3a.branch1.conv",)).settings()
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


def _tiny_graph(path: Path, rng: np.random.Generator, opset: int = 17) -> Path:
    from onnx import TensorProto, helper, numpy_helper

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
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10), str(path))
    return path


def test_quantize_runs_the_onnx_backend_on_a_real_graph(tmp_path: Path) -> None:
    """The entry point dispatches through the format table to ONNX Runtime's real quantizer: the file it
    writes holds int8 weights and its sidecar records the recipe's passes."""
    from onnx import TensorProto

    from quantize.calibration import ArraySource

    rng = np.random.default_rng(0)
    fp32 = _tiny_graph(tmp_path / "tiny.onnx", rng)
    images = rng.normal(size=(8, 3, 8, 8)).astype(np.float32)
    result = quantize(fp32, ArraySource(images, origin="test"), Int8Preset("onnx", "plain"))
    model = onnx.load(str(result.path))
    assert any(t.data_type == TensorProto.INT8 for t in model.graph.initializer)
    assert result.info["quantization"]["recipe"] == "plain" and result.info["quantization"]["passes"] == []


@pytest.mark.parametrize("on_this_host", [True, False])
def test_drift_runs_on_this_hosts_kernels_only_when_they_are_the_targets(tmp_path: Path, on_this_host: bool) -> None:
    """By default the drift report runs the int8 model on this host's kernels only when the model was made for
    them; otherwise it says why not (and the emulated run, which ARM's kernels reproduce, is still there)."""
    from export.evaluation import EvalSet
    from quantize.calibration import ArraySource
    from quantize.onnx_int8 import quantize_onnx
    from quantize.presets import PRESETS, host_target

    rng = np.random.default_rng(2)
    fp32 = _tiny_graph(tmp_path / "tiny.onnx", rng, opset=21)
    images, unseen = rng.normal(size=(8, 3, 8, 8)).astype(np.float32), rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    target = host_target() if on_this_host else next(t for t in PRESETS if t != host_target())
    unlabelled = EvalSet([Path(f"{i}.png") for i in range(4)], unseen, np.full(4, -1))
    config = PRESETS[target]()
    out = tmp_path / "tiny.int8.onnx"
    drift = quantize_onnx(fp32, ArraySource(images, origin="test"), config, unlabelled, out_path=out).info["drift"]
    assert drift["emulated"]["fidelity"]["top1_agreement"] >= 0
    if on_this_host:
        assert drift["host"]["fidelity"]["top1_agreement"] >= 0 and drift["host_skipped"] is None
    else:
        assert drift["host"] is None and drift["host_caveat"] is None
        assert f"made for {target}" in drift["host_skipped"] and host_target() in drift["host_skipped"]
        summary = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["drift"])
        assert set(summary) == {"images", "emulated"}


def test_int16_activations_keep_int8_weights_and_a_finer_grid(tmp_path: Path) -> None:
    """The `int16-activations` pass (A16W8): activations on int16 grids, weights still int8, and the output
    follows float more closely than with int8 activations, on inputs it was not calibrated on. The drift
    report drops the host's int8-kernel caveat for it: every CPU runs int16 activations in float."""
    from onnx import TensorProto, numpy_helper

    from edge_runtime.hostinfo import int8_host_caveat
    from edge_runtime.sessions import throughput_runner
    from export.evaluation import EvalSet
    from quantize.calibration import ArraySource
    from quantize.onnx_int8 import quantize_onnx

    rng = np.random.default_rng(1)
    fp32 = _tiny_graph(tmp_path / "tiny.onnx", rng, opset=21)
    images, unseen = rng.normal(size=(8, 3, 8, 8)).astype(np.float32), rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    errors, steps = {}, {}
    for passes in ((), ("int16-activations",)):
        config = apply_passes(QuantizationConfig.arm64(), passes, ONNX_PASSES)
        out = tmp_path / f"tiny.{len(passes)}.onnx"
        unlabelled = EvalSet([Path(f"{i}.png") for i in range(4)], unseen, np.full(4, -1))
        source = ArraySource(images, origin="test")
        result = quantize_onnx(fp32, source, config, eval_set=unlabelled, out_path=out, host_run=True)
        assert result.info["drift"]["host_caveat"] == (None if passes else int8_host_caveat())
        model = onnx.load(str(out))
        zero_points = {
            numpy_helper.to_array(t).dtype.name for t in model.graph.initializer if t.name.endswith("zero_point")
        }
        weights = [t for t in model.graph.initializer if t.name == "w_quantized"]
        assert weights and weights[0].data_type == TensorProto.INT8
        assert ("int16" in zero_points) == bool(passes), zero_points
        steps[passes] = float(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "x_scale")))
        float_out = throughput_runner(fp32)(unseen)
        errors[passes] = float(np.abs(throughput_runner(out, optimize=False)(unseen) - float_out).max())
    assert steps[()] / steps[("int16-activations",)] == pytest.approx(65535 / 255, rel=1e-3)  # same range
    assert errors[("int16-activations",)] < errors[()] / 2, errors  # what is left is the int8 weights' error


def test_weights_only_keeps_int8_weights_and_no_activation_grid(tmp_path: Path) -> None:
    """The `weights-only` pass (W8A32): the int8 weights stay (dequantized by Cast -> Mul, which ONNX Runtime
    folds at load), no activation is quantized, so the model computes the float graph on the dequantized
    weights, with graph optimisations off and on alike."""
    from onnx import TensorProto, numpy_helper

    from edge_runtime.sessions import throughput_runner
    from quantize.calibration import ArraySource
    from quantize.onnx_int8 import quantize_onnx

    rng = np.random.default_rng(2)
    fp32 = _tiny_graph(tmp_path / "tiny.onnx", rng, opset=21)
    images, unseen = rng.normal(size=(8, 3, 8, 8)).astype(np.float32), rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    out = tmp_path / "tiny.weights.onnx"
    config = apply_passes(QuantizationConfig.arm64(), ("weights-only",), ONNX_PASSES)
    config = replace(config, float_outputs=("Flatten",))  # the logits' producer float, as `learned`'s classifier
    quantize_onnx(fp32, ArraySource(images, origin="test"), config, out_path=out)
    model = onnx.load(str(out))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops, ops
    assert ops.count("Cast") == ops.count("Mul") == 1, ops  # the weights' own dequantization
    stored = {t.name: t for t in model.graph.initializer}
    assert stored["w_quantized"].data_type == TensorProto.INT8
    dequantized = numpy_helper.to_array(stored["w_quantized"]).astype(np.float32) * numpy_helper.to_array(
        stored["w_scale_4x1x1x1"]  # the channel scales, shaped to broadcast along the output channels
    )
    on_grid = onnx.load(str(fp32))
    on_grid.graph.initializer[0].CopyFrom(numpy_helper.from_array(dequantized, "w"))
    onnx.save(on_grid, str(tmp_path / "on-grid.onnx"))
    expected = throughput_runner(tmp_path / "on-grid.onnx")(unseen)
    np.testing.assert_allclose(throughput_runner(out, optimize=False)(unseen), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(throughput_runner(out)(unseen), expected, rtol=1e-5, atol=1e-6)  # folded at load
    assert np.abs(expected - throughput_runner(fp32)(unseen)).max() > 0  # the weights were rounded
    assert json.loads(Path(f"{out}.json").read_text())["quantization"]["format"] == "Cast/Mul dequantization"


@pytest.mark.slow
def test_learned_a16_on_the_real_network(bvlc_onnx_export, bvlc_loaded, imagenet_sample_dir, tmp_path: Path) -> None:
    """`--int8-recipe learned-a16`, `learned-weights` and `learned-palette` on the real network and photos:
    a16 and weights keep the same int8 weights as `learned` (one GPTQ fit); a16 puts int16 grids on the same
    ranges, and so leaves a small fraction of the activation error of `learned`, each judged against
    `learned-weights` (the same int8 weights, every activation float); the palettes leave less weight error
    than the int8 grid. Judged on the calibration photos: on others, 12 photos' ranges clip, the same on both
    grids."""
    from onnx import numpy_helper

    from edge_runtime.sessions import throughput_runner
    from export.evaluation import predict
    from quantize.calibration import FolderSource

    source = FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=12, seed=3)
    photos = source.arrays()
    stored, logits = {}, {}
    for name in ("learned", "learned-a16", "learned-weights", "learned-palette"):
        out = tmp_path / name / "googlenet.int8.onnx"  # not beside the shared FP32 export, which other tests list
        result = quantize(
            bvlc_onnx_export.path, source, Int8Preset("onnx", name), out_path=out, reference=bvlc_loaded.model
        )
        stored[name] = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
        logits[name] = predict(throughput_runner(out, optimize=False), photos, name)
        assert result.info["quantization"]["passes"] == list(ONNX_RECIPES[name])
    weights = [k for k, v in stored["learned"].items() if v.dtype == np.int8 and v.ndim > 1]
    assert len(weights) == 58  # every conv (conv1 too: its activations are float, its weights int8) and the classifier
    for key in weights:
        np.testing.assert_array_equal(stored["learned-a16"][key], stored["learned"][key], err_msg=key)
        np.testing.assert_array_equal(stored["learned-weights"][key], stored["learned"][key], err_msg=key)
    weights_only = onnx.load(str(tmp_path / "learned-weights" / out.name))
    assert "QuantizeLinear" not in {node.op_type for node in weights_only.graph.node}  # no activation grid left
    activations = {v.dtype.name for k, v in stored["learned-a16"].items() if k.endswith("zero_point") and v.ndim == 0}
    assert activations == {"int16"}, activations
    error = {name: float(np.sqrt(np.mean((logits[name] - logits["learned-weights"]) ** 2))) for name in stored}
    assert error["learned-a16"] < 0.1 * error["learned"], error
    # 8-bit palettes: a uint8 index per weight of every layer but conv1 (float: the recipe's float stem), no
    # int8 grid anywhere, and less weight error than the int8 grid's (FP32's logits on the same photos)
    palette = stored["learned-palette"]
    indices = [k for k, v in palette.items() if k.endswith("_palette_index")]
    assert len(indices) == 57 and all(palette[k].dtype == np.uint8 for k in indices)
    assert palette["conv1.conv.weight"].dtype == np.float32
    assert not any(v.dtype == np.int8 for v in palette.values())
    fp32 = predict(throughput_runner(bvlc_onnx_export.path), photos, "FP32")
    weight_error = {name: float(np.sqrt(np.mean((logits[name] - fp32) ** 2))) for name in stored}
    assert weight_error["learned-palette"] < weight_error["learned-weights"], weight_error
