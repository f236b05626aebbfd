"""FP32 ONNX -> int8 QDQ ONNX with ONNX Runtime static quantization, calibrated on real images."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from edge_runtime import kernel_coverage
from edge_runtime.hostinfo import host_facts, usable_cores
from edge_runtime.metrics import file_sha256
from export import __version__
from export.artifact_record import ArtifactRecord, write_sidecar
from export.artifacts import (
    MODEL_IDENTITY_KEYS,
    publish,
    read_onnx_metadata,
    set_onnx_metadata,
    sidecar_path,
    staging_dir,
)
from export.errors import ToolkitError, one_line
from export.evaluation import EvalSet, round_floats
from export.inspect_onnx import count_file
from export.onnx_lrn import compact_lrn_bands, lowered_lrn_nodes, share_lrn_inputs
from export.ui import progress, step
from quantize.accuracy_control import control_accuracy
from quantize.calibration import CalibrationSource, OrtCalibrationReader
from quantize.drift import drift_report, host_skipped
from quantize.onnx_float import float_activations, floatable_activations, tensors_around, tensors_read_by
from quantize.onnx_pools import keep_max_pools_float
from quantize.onnx_weights import apply_rounding, palettized_graph, weights_folded_at_load, with_model_stem
from quantize.presets import QuantizationConfig, refuse_accuracy_control
from quantize.ranges import inputs_of_5x5_convs, set_mse_ranges, share_concat_ranges, widen_ranges

# What the int8 model shares with its FP32 parent: identity, inputs and labels (not its accuracy).
INHERITED_METADATA = (*MODEL_IDENTITY_KEYS, "preprocess", "labels")


@dataclass
class Int8Result:
    path: Path
    sidecar: Path
    info: dict
    timings: dict[str, float] = field(default_factory=dict)


def int8_path_for(fp32_path: Path) -> Path:
    """`googlenet.onnx` -> `googlenet.int8.onnx`."""
    return fp32_path.with_name(f"{fp32_path.stem}.int8{fp32_path.suffix}")


class _ProgressReader(OrtCalibrationReader):
    """The calibration reader, with a progress bar over the batches ONNX Runtime pulls."""

    def __init__(self, source: CalibrationSource, input_name: str, total: int) -> None:
        super().__init__(source, input_name)
        self.total = total

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iterator is None:
            self._iterator = iter(progress(self.source.batches(), "Calibrating", total=self.total))
        batch = next(self._iterator, None)
        return None if batch is None else {self.input_name: batch}


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs every node at INFO and prints hints; the report says what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _check_calibration_shape(model: onnx.ModelProto, source: CalibrationSource) -> None:
    """A batch the model cannot take is a one-line error here, not ONNX Runtime's traceback later."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in model.graph.input[0].type.tensor_type.shape.dim]
    batch = next(iter(source.batches()), None)
    if batch is None:
        raise ToolkitError("calibration source yielded no data")
    expected = tuple("N" if d is None else d for d in dims)
    fits = batch.ndim == len(dims) and all(d is None or d == b for d, b in zip(dims, batch.shape, strict=True))
    if not fits:
        raise ToolkitError(f"calibration batches have shape {tuple(batch.shape)}; the model takes {expected}")


def _check_excludes(model: onnx.ModelProto, exclude: tuple[str, ...], path: Path) -> None:
    names = {node.name for node in model.graph.node}
    unknown = [name for name in exclude if name not in names]
    if unknown:
        raise ToolkitError(f"--exclude names no node of the model: {', '.join(unknown)}", path)


def _calibration_method(config: QuantizationConfig):
    """ONNX Runtime's calibrator and its options for `config.calibration`.

    Entropy keeps ONNX Runtime's defaults (128 bins for 128 quantized bins). On BVLC GoogLeNet they give
    exactly min-max's ranges; 2048 bins clip ReLU activations so hard that top-1 fell to 37% (measured
    here, see README), so the finer histogram is not used.
    """
    from onnxruntime.quantization import CalibrationMethod

    symmetric = config.activation_symmetric
    return {
        "minmax": (CalibrationMethod.MinMax, {"symmetric": symmetric}),
        "mse": (CalibrationMethod.MinMax, {"symmetric": symmetric}),  # min-max first, then `quantize.ranges`
        "entropy": (CalibrationMethod.Entropy, {"symmetric": symmetric}),
        "percentile": (
            CalibrationMethod.Percentile,
            {"num_bins": 2048, "percentile": config.percentile, "symmetric": symmetric},
        ),
    }[config.calibration]


def calibrate(pre: Path, source: CalibrationSource, config: QuantizationConfig, count: int, workdir: Path) -> Path:
    """Run the calibration images through the model once and save the activation ranges (ORT's cache
    format), so quantization itself needs no data and the ranges can be inspected or reused."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    method, options = _calibration_method(config)
    model = onnx.load(str(pre), load_external_data=False)
    input_name = model.graph.input[0].name
    with _quiet_quantizer():
        calibrator = create_calibrator(
            pre,
            sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        if config.calibration in ("minmax", "mse"):
            _collect_in_parallel(calibrator, OrtCalibrationReader(source, input_name), count)
        else:  # histograms are merged batch by batch: ONNX Runtime's own loop, in its order
            calibrator.collect_data(_ProgressReader(source, input_name, count))
        ranges = calibrator.compute_data()
    if config.calibration == "mse":
        set_mse_ranges(pre, ranges, OrtCalibrationReader(source, input_name), count)
    if config.wide_5x5_inputs != 1.0:
        widen_ranges(ranges, inputs_of_5x5_convs(model), config.wide_5x5_inputs)
    if config.shared_concat_ranges:
        share_concat_ranges(model, ranges)
    cache = workdir / "calibration.json"
    save_tensors_data(ranges, cache)
    return cache


def _collect_in_parallel(calibrator, reader: OrtCalibrationReader, count: int) -> None:
    """MinMax's per-image minima and maxima, one single-threaded run per core at once and with graph
    optimisations (ONNX Runtime's own loop runs them one by one with none: 2.1x slower here). The minimum and
    maximum of the same numbers do not depend on the order they were collected in."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(calibrator.augmented_model_path, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    kept = calibrator.model_original_outputs  # the model's own outputs are not calibrated
    feeds = list(iter(reader.get_next, None))
    with ThreadPoolExecutor(usable_cores()) as pool:
        runs = pool.map(lambda feed: session.run(None, feed), feeds)
        for outputs in progress(runs, "Calibrating", total=len(feeds) or count):
            calibrator.intermediate_outputs.append(
                [None if name in kept else value for name, value in zip(names, outputs, strict=True)]
            )


def _quantize_static(pre: Path, out: Path, cache: Path, config: QuantizationConfig, float_nodes: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method, _ = _calibration_method(config)
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16}
    with _quiet_quantizer():
        quantize_static(
            str(pre),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=types[config.activation_type],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[*config.exclude, *float_nodes] or None,
            calibrate_method=method,
            calibration_cache_path=str(cache),
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": config.activation_symmetric,
                "OpTypesToExcludeOutputQuantization": list(config.float_outputs),
            },
        )


def _quantize_qdq(pre: Path, pre_model: onnx.ModelProto, staged: Path, source, count: int, config, reference):
    """ONNX Runtime's static QDQ quantization of `pre` with the recipe's rounding, ranges and float tensors:
    the model, the rounding's record, and the nodes/tensors left float (LRN, max pools, activations)."""
    rounding = None
    if config.rounding != "nearest":
        step(f"rounding the weights ({config.rounding}) on {count} calibration images")
        rounding = apply_rounding(pre, reference, np.concatenate(list(source.batches())), config)
    cache = calibrate(pre, source, config, count, staged.parent)
    lrn_nodes = lowered_lrn_nodes(pre_model)  # no integer LRN kernel anywhere: float, between DQ and Q
    _quantize_static(pre, staged, cache, config, lrn_nodes)
    quantized = onnx.load(str(staged))
    float_pools = keep_max_pools_float(quantized)
    float_inputs = float_activations(
        quantized,
        [
            *tensors_around(quantized, config.float_activation_nodes),
            *tensors_read_by(quantized, config.float_inputs),
            *(floatable_activations(quantized) if config.weights_only else []),
        ],
    )
    compact_lrn_bands(quantized)  # quant_pre_process folded them into C x C floats: +164 KB
    share_lrn_inputs(quantized)
    if config.weights_only:
        weights_folded_at_load(quantized)
    return quantized, rounding, lrn_nodes, float_pools, float_inputs


def quantize_onnx(
    fp32_path: Path,
    source: CalibrationSource,
    config: QuantizationConfig,
    eval_set: EvalSet | None = None,
    fp32_logits: np.ndarray | None = None,
    out_path: Path | None = None,
    reference=None,
    budget=None,
    validation: EvalSet | None = None,
    host_run: bool | None = None,
) -> Int8Result:
    """Quantize, stamp metadata, measure drift; `googlenet.int8.onnx` appears only when all succeeded.
    `host_run`: also run the drift on this host's int8 kernels (None: only when they are the target's)."""
    if budget:
        refuse_accuracy_control(config)
    fp32_path = Path(fp32_path)
    final = out_path or int8_path_for(fp32_path)
    metadata = read_onnx_metadata(fp32_path)
    timings: dict[str, float] = {}
    with staging_dir(final.parent) as stage:
        started = time.perf_counter()
        calibration = source.describe()  # loads and preprocesses the images once, with a progress bar
        count = int(calibration["images"])
        pre = stage / "pre.onnx"
        step(f"quantizing for {config.target} ({config.calibration} calibration on {count} images)")
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            with _quiet_quantizer():
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as exc:
            raise ToolkitError(f"quantization pre-processing failed ({one_line(exc)})", fp32_path) from None
        pre_model = onnx.load(str(pre), load_external_data=False)
        config = replace(
            config,
            exclude=with_model_stem(pre_model, config.exclude),
            float_activation_nodes=with_model_stem(pre_model, config.float_activation_nodes),
        )
        _check_excludes(pre_model, config.exclude, fp32_path)
        _check_calibration_shape(pre_model, source)
        staged = stage / final.name
        if config.weight_grid == "palette":
            step(f"fitting 8-bit weight palettes (GPTQ) on {count} calibration images")
            images = np.concatenate(list(source.batches()))
            quantized, rounding = palettized_graph(fp32_path, reference, images, config)
            # nothing is quantized but the weights: every LRN, pool and activation computes in float
            lrn_nodes = lowered_lrn_nodes(quantized)
            nodes = quantized.graph.node
            float_pools = [node.name for node in nodes if node.op_type == "MaxPool"]
            float_inputs = list(dict.fromkeys(node.input[0] for node in nodes if node.op_type in ("Conv", "Gemm")))
        else:
            quantized, rounding, lrn_nodes, float_pools, float_inputs = _quantize_qdq(
                pre, pre_model, staged, source, count, config, reference
            )
        control = None
        if budget and validation is not None:
            quantized, control = control_accuracy(quantized, fp32_path, validation, budget)
        onnx.save(quantized, str(staged))
        timings["quantize_s"] = time.perf_counter() - started

        drift = None
        if eval_set is not None and len(eval_set):
            started = time.perf_counter()
            int8_activations = config.activation_type != "int16" and not config.weights_only
            skipped = host_skipped(config.target, host_run)
            drift = drift_report(fp32_path, staged, eval_set, fp32_logits, stage, int8_activations, skipped)
            drift["eval"]["dataset"] = eval_set_description(eval_set)
            timings["drift_s"] = time.perf_counter() - started
        # what this host's ONNX Runtime really runs in int8 (what the drift's "host" row, when run, runs)
        sample = eval_set.inputs[:1] if eval_set is not None and len(eval_set) else next(iter(source.batches()))[:1]
        kernels = kernel_coverage.coverage(
            staged, sample, [[layer.name, layer.macs] for layer in count_file(staged).layers]
        )

        record = ArtifactRecord(
            format="onnx",
            precision="int8",
            fp32_model=fp32_path.name,
            fp32_sha256=file_sha256(fp32_path),
            quantization={
                **config.to_dict(),
                **({"rounding": rounding} if rounding else {}),
                "float_ops": {
                    "lrn": sorted({n.split("/")[0] for n in lrn_nodes}),
                    "max_pools": float_pools,
                    "activations": float_inputs,
                },
                **({"accuracy_control": control} if control else {}),
            },
            calibration=calibration,
            drift=drift,
            kernels=kernels,
            host=host_facts(),
            **{key: _maybe_json(metadata[key]) for key in INHERITED_METADATA if key in metadata},
        )
        model = onnx.load(str(staged))
        set_onnx_metadata(
            model,
            {
                **{k: v for k, v in metadata.items() if k in INHERITED_METADATA},
                "precision": "int8",
                "quantization": record.to_dict()["quantization"],
                "calibration": {k: v for k, v in calibration.items() if k != "unreadable"},
                "drift": _drift_summary(drift),
            },
            replace_all=True,  # the FP32 model's evaluation/validation figures are not this model's
        )
        model.producer_name, model.producer_version = "googlenet-edge", __version__
        onnx.save(model, str(staged))
        fp32_size = fp32_path.stat().st_size
        record = replace(record.for_file(staged), fp32_size_bytes=fp32_size)
        record = replace(record, size_ratio=round(record.size_bytes / fp32_size, 4))
        publish({staged: final, write_sidecar(staged, record): sidecar_path(final)})
    return Int8Result(final, sidecar_path(final), record.to_dict(), timings)


def eval_set_description(eval_set: EvalSet) -> dict:
    return {
        "images": len(eval_set),
        "unreadable": [f"{p.name}: {msg}" for p, msg in eval_set.unreadable],
        "skipped_non_images": eval_set.skipped_non_images,
    }


def _drift_summary(drift: dict | None) -> dict:
    """The headline drift numbers for `metadata_props` (the full report lives in the sidecar)."""
    if not drift:
        return {}
    summary: dict = {"images": drift["eval"]["images"]}
    for run in ("host", "emulated"):
        if not drift.get(run):
            continue
        summary[run] = {
            "top1_drop_pp": drift[run].get("top1_drop_pp"),
            "top1_agreement": drift[run]["fidelity"]["top1_agreement"],
        }
    return round_floats(summary)


def _maybe_json(value: str) -> object:
    import json

    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value
