"""Full-integer int8 TFLite from the toolkit's calibration images, with three measured fixes.

TFLite's plain post-training int8 of this network agrees with FP32 on ~97.5% of held-out photos (mean of
five calibration draws, 400 photos each), and even int8 weights alone (float activations) on ~98.1%, so
the per-layer noise has to come down, not just be moved around. Measured noise sources, largest first:

1. The stem. The Caffe input convention (pixels minus the mean, no scaling) makes conv1's output span
   0-4300, quantized in 17-unit steps right before LRN: on its own ~2/3 of all activation noise.
   `float_stem` keeps the ops up to the first max pool (pad, conv1, pool1; with uint8 I/O also the
   pixel normalisation) in float, like LRN after them: 7.5% of the multiply-adds, and conv1's 9,408
   weights stored as float16 (+9 KB; float32 would push the file past 26% of the fp32 one).
2. The rounding of int8 weights shifts each output channel's mean. `bias_correction` measures each
   layer's mean input on the calibration images and subtracts the expected error (empirical bias
   correction, Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
   Correction", section 4.2).
3. `global_mean`: the 7x7 average pool exported as MEAN, whose int8 output gets its own range
   (see `export.tflite_graph`).

The bias correction costs one eager TensorFlow pass over the calibration images (~10 s for 100).
`python -m studies.tflite_int8_study` measures the fixes over several calibration draws.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from edge_runtime.kernel_coverage import is_lowered_lrn
from edge_runtime.sessions import tflite_names
from export.errors import ToolkitError
from quantize.presets import WIDE_5X5_FACTOR  # one factor for both backends
from quantize.tflite_weights import INT8_WEIGHT_MAX, int8_kernels, packed_kernels, per_channel_int8


@dataclass(frozen=True)
class TfliteInt8Config:
    """How TFLite int8 is quantized: the switches the passes set. The CLI's default is `recipe("learned")`."""

    float_stem: bool = True
    bias_correction: bool = True
    global_mean: bool = True
    # "nearest" (the converter's own) or a `quantize.rounding` method: the weights are rounded onto TFLite's
    # int8 grid beforehand, so the converter's round-to-nearest reproduces that rounding exactly
    rounding: str = "nearest"
    # the classifier as a hybrid FULLY_CONNECTED: int8 per-channel weights (same bytes), float input and float
    # logits; the int8 logits' step (~0.17) is half of the int8 model's logit error energy
    float_logits: bool = False
    # the activations feeding 5x5 convolutions get this many times their calibrated range (`quantize.presets`)
    wide_5x5_inputs: float = 1.0
    # int8 kernels behind DEQUANTIZE on the float graph, no activation quantized (`quantize.tflite_weights`)
    weights_only: bool = False
    # weights-only refinements (`quantize.equalization`, `quantize.mixed_precision`): channels rescaled between
    # layers before rounding; the convolutions of most logit error per byte kept float16
    equalize: bool = False
    float16_layers: bool = False

    @classmethod
    def plain(cls) -> TfliteInt8Config:
        """TFLite's post-training int8 as the converter does it alone (the baseline the fixes are measured on)."""
        return cls(float_stem=False, bias_correction=False, global_mean=False)

    def to_dict(self) -> dict:
        """The recipe as the sidecar records it: the switches, then the passes and what stays float."""
        data = asdict(self)
        data["passes"] = [
            name
            for name, overrides in TFLITE_PASSES.items()
            if all(getattr(self, k) == v for k, v in overrides.items())
        ]
        if self.weights_only:
            data["kept_float"] = ["every activation (weights-only: int8 kernels dequantized at load)",
                                  *(["conv1 (float16 weights)"] if self.float_stem else []),
                                  *(["the convolutions in fit.float16.layers (float16 weights)"]
                                    if self.float16_layers else [])]  # fmt: skip
            data["weight_rounding"] = self.rounding
            return data
        data["kept_float"] = [
            *(["pad", "conv1 (float16 weights)", "pool1"] if self.float_stem else []),
            "norm1 (LRN)",
            "norm2 (LRN)",
            *(["avgpool (MEAN)", "fc output (hybrid: int8 weights, float logits)"] if self.float_logits else []),
        ]
        data["weight_rounding"] = self.rounding if self.rounding != "nearest" else "nearest (the converter's)"
        return data


# How TFLite carries out each pass of `quantize.passes` it supports: overrides of `TfliteInt8Config`. (The
# converter always gives a Concat's inputs the Concat's grid, so `shared-concat-grid` needs no switch.)
TFLITE_PASSES: dict[str, dict] = {
    "float-stem": {"float_stem": True},
    "bias-correction": {"bias_correction": True},  # after learned rounding ~0: the kernels are on the grid
    "pool-own-grid": {"global_mean": True},  # the 7x7 average pool as MEAN, whose int8 output gets its own range
    "gptq-rounding": {"rounding": "gptq"},
    "hybrid-classifier": {"float_logits": True},
    "wide-5x5-inputs": {"wide_5x5_inputs": WIDE_5X5_FACTOR},
    "weights-only": {"weights_only": True},
    "equalize-channels": {"equalize": True},
    "float16-sensitive": {"float16_layers": True},
}
_STEM_BIAS_POOL = ("float-stem", "bias-correction", "pool-own-grid")
_MIXED = ("equalize-channels", "float16-sensitive")
# Named recipes (`--int8-recipe`), as passes on top of the converter's own post-training int8 (`plain`).
RECIPES: dict[str, tuple[str, ...]] = {
    # `learned` without the fit; the hybrid classifier chosen on validation splits: logit RMS 0.085 -> 0.059
    "toolkit": (*_STEM_BIAS_POOL, "hybrid-classifier"),
    "plain": (),
    # the default (quantize.recipes); `wide-5x5-inputs` since session 13: five draws 99.05 / 98.25% -> 99.15 / 98.25%
    "learned": (*_STEM_BIAS_POOL, "gptq-rounding", "hybrid-classifier", "wide-5x5-inputs"),
    # opt-in: `learned`'s weights with float activations (W8A32); five draws 99.20 / 98.75% (docs/int8-fidelity.md)
    "learned-weights": (*_STEM_BIAS_POOL, "gptq-rounding", "weights-only"),
    # opt-in, TFLite only: `learned-weights` with channels equalized before GPTQ and the layers of most error per
    # byte in float16 (no bias correction: it would "correct" the float16 kernels); chosen on validation splits
    "learned-mixed": ("float-stem", "pool-own-grid", "gptq-rounding", "weights-only", *_MIXED),
    "learned-calibrated-5x5": (*_STEM_BIAS_POOL, "gptq-rounding", "hybrid-classifier"),  # until session 13
    "gptq": (*_STEM_BIAS_POOL, "gptq-rounding"),  # single steps, measured on their own
    "stem-bias-pool": _STEM_BIAS_POOL,  # the default before the hybrid classifier
}


def recipe(name: str) -> TfliteInt8Config:
    from quantize.passes import apply_passes

    try:
        config = apply_passes(TfliteInt8Config.plain(), RECIPES[name], TFLITE_PASSES)
    except KeyError:
        raise ToolkitError(f"unknown --int8-recipe {name!r} (choose from {', '.join(RECIPES)})") from None
    if (config.equalize or config.float16_layers) and not config.weights_only:
        raise ToolkitError(f"--int8-recipe {name}: equalize-channels and float16-sensitive need weights-only")
    return config


def rounding_error(kernel: np.ndarray) -> np.ndarray:
    """TFLite's int8 rounding error of a kernel whose last axis is the output channel (HWIO or IO)."""
    axes = tuple(range(kernel.ndim - 1))
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / INT8_WEIGHT_MAX
    scale = np.where(scale == 0, 1.0, scale)
    return np.round(kernel / scale) * scale - kernel


def bias_shifts(recorded: dict[str, list], skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Per layer, the mean output error its weight rounding adds: sum over inputs of error x mean input.

    `recorded`: name -> [kernel (HWIO or IO), mean input per channel]; border zero padding is not modelled.
    """
    shifts = {}
    for name, (kernel, mean_input) in recorded.items():
        if name in skip:
            continue
        error = rounding_error(kernel.astype(np.float64))
        per_input = error.reshape(-1, error.shape[-2], error.shape[-1]).sum(axis=0)  # [in, out]
        shifts[name] = (mean_input @ per_input).astype(np.float32)
    return shifts


def stem_tensor_names(flatbuffer: bytes) -> list[str]:
    """Output tensor names of the ops from the input up to and including the first MAX_POOL_2D."""
    stem = []
    for model, op, name in _ops(flatbuffer):
        stem += [model.subgraphs[0].tensors[t].name.decode() for t in op.outputs]
        if name == "MAX_POOL_2D":
            return stem
    raise ToolkitError("no max pool in the calibrated model: cannot find the stem to keep in float")


def lowered_lrn_tensor_names(flatbuffer: bytes) -> list[str]:
    """Output tensor names of the ops of each lowered LRN (`export.tflite_graph`): LRN stays float in int8, as
    its builtin did (no integer LRN kernel anywhere; quantizing x^2 alone would cost its small values)."""
    ops = list(_ops(flatbuffer))
    if not ops:
        return []
    graph = ops[0][0].subgraphs[0]
    names = [graph.tensors[t].name.decode() for _, op, _ in ops for t in op.outputs]
    return [name for name in names if is_lowered_lrn(name)]


def _ops(flatbuffer: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    yield from _ops_of(flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer)))


def classifier_tensor_names(flatbuffer: bytes) -> list[str]:
    """Output tensor names of the last FULLY_CONNECTED and the MEAN feeding it (the pooled features)."""
    ops = list(_ops(flatbuffer))
    graph = ops[0][0].subgraphs[0]
    fc = [op for _, op, name in ops if name == "FULLY_CONNECTED"]
    if not fc:
        raise ToolkitError("no FULLY_CONNECTED in the calibrated model: cannot keep the logits float")
    names = [graph.tensors[t].name.decode() for t in fc[-1].outputs]
    producers = {t: op for _, op, name in ops if name == "MEAN" for t in op.outputs}
    for t in fc[-1].inputs:
        if t in producers:
            names += [graph.tensors[o].name.decode() for o in producers[t].outputs]
    return names


def hybrid_classifier(flatbuffer: bytes) -> bytes:
    """Turn float FULLY_CONNECTED ops with constant float32 weights into hybrid ones: the same int8
    per-channel symmetric weights a full-int8 model stores (scale max|w|/127), float input (quantized on the
    fly per image, asymmetric), float output."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    done = 0
    for _, op, name in _ops_of(model):
        if name != "FULLY_CONNECTED":
            continue
        weight = graph.tensors[op.inputs[1]]
        data = model.buffers[weight.buffer].data
        if weight.type != schema.TensorType.FLOAT32 or data is None:
            continue
        ints, scale = per_channel_int8(np.frombuffer(bytes(data), np.float32).reshape(weight.shape))
        model.buffers[weight.buffer].data = np.frombuffer(ints.tobytes(), np.uint8)
        weight.type = schema.TensorType.INT8
        weight.quantization = schema.QuantizationParametersT()
        weight.quantization.scale = [float(v) for v in scale]
        weight.quantization.zeroPoint = [0] * len(scale)
        weight.quantization.quantizedDimension = 0
        op.builtinOptions.asymmetricQuantizeInputs = True
        code = model.operatorCodes[op.opcodeIndex]
        code.version = max(code.version, 7)  # hybrid with asymmetric input quantization
        done += 1
    if not done:
        raise ToolkitError("found no float classifier to turn into a hybrid int8 one")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _ops_of(model):
    from ai_edge_litert.tools import flatbuffer_utils

    names, _ = tflite_names()
    for op in model.subgraphs[0].operators:
        code = flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        yield model, op, names.get(code)


def quantize(
    converter, calibration: np.ndarray, io: str, config: TfliteInt8Config, float16_kernels: frozenset = frozenset()
) -> bytes:
    """Calibrate `converter` on `calibration` (NHWC, the input's own convention), then quantize to int8.

    The calibrated float model goes through the same MLIR quantizer `converter.convert()` would call,
    only with the stem on its denylist when `config.float_stem`. Weights-only: the kernels whose
    `kernel_digest` is in `float16_kernels` are stored float16, the others int8.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert  # the converter's own quantizer entry point

    if config.weights_only:
        if io != "float32":
            raise ToolkitError(f"--int8-recipe learned-weights keeps activations float: --io {io} needs int8 ones")
        flat = converter.convert()
        flat = int8_kernels(flat, stem_tensor_names(flat) if config.float_stem else (), float16_kernels)
        flat = stem_weights_to_fp16(flat) if config.float_stem or float16_kernels else flat
        return tflite_convert.deduplicate_readonly_buffers(flat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    # Everything int8 except LRN (no integer kernel; lowered, on the denylist) and the stem, float on purpose.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    io_type = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[io]
    converter._experimental_calibrate_only = True  # the step tf.lite QuantizationDebugger also takes
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected ...; continuing anyway."
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
        calibrated = converter.convert()
    if config.wide_5x5_inputs != 1.0:
        calibrated = widen_5x5_inputs(calibrated, config.wide_5x5_inputs)
    denylist = lowered_lrn_tensor_names(calibrated)
    denylist += stem_tensor_names(calibrated) if config.float_stem else []
    if config.float_logits:
        denylist += classifier_tensor_names(calibrated)
    quantized = tflite_convert.mlir_quantize(
        calibrated,
        input_data_type=io_type,
        output_data_type=tf.float32 if io == "float32" else tf.int8,
        denylisted_nodes=denylist or None,
    )
    if config.float_stem:
        quantized = stem_weights_to_fp16(quantized)
    if config.float_logits:
        quantized = hybrid_classifier(quantized)
    return tflite_convert.deduplicate_readonly_buffers(quantized)  # as convert() does after quantizing


def widen_5x5_inputs(calibrated: bytes, factor: float) -> bytes:
    """The calibrated min/max of each CONV_2D input whose kernel is 5x5, times `factor`, before quantization."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    widened = 0
    for _, op, name in _ops_of(model):
        kernel = graph.tensors[op.inputs[1]] if name == "CONV_2D" else None
        if kernel is None or list(kernel.shape[1:3]) != [5, 5]:
            continue
        stats = graph.tensors[op.inputs[0]].quantization
        if stats is None or stats.min is None or stats.max is None:
            raise ToolkitError("a 5x5 convolution's input has no calibrated range to widen")
        stats.min = [float(v) * factor for v in stats.min]
        stats.max = [float(v) * factor for v in stats.max]
        widened += 1
    if not widened:
        raise ToolkitError("found no 5x5 convolution whose input range to widen")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def stem_weights_to_fp16(flatbuffer: bytes) -> bytes:
    """Store the float convolutions' constant kernels as float16 behind a DEQUANTIZE, the way TFLite's own
    fp16 models do (XNNPACK unpacks them once at load). Keeps the float stem at +9 KB instead of +28 KB."""
    from ai_edge_litert import schema_py_generated as schema

    def as_float16(written: str, kernel, values: np.ndarray):
        return values.astype(np.float16).tobytes(), schema.TensorType.FLOAT16, b"/fp16", None

    # version 3: the first DEQUANTIZE that takes float16 input
    return packed_kernels(flatbuffer, ("CONV_2D",), as_float16, dequantize_version=3) or flatbuffer
