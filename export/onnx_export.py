"""PyTorch -> validated, simplified, self-describing ONNX (`python -m export onnx`)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from edge_runtime.formats import BY_NAME
from edge_runtime.sessions import OnnxRunner, throughput_runner
from export import __version__, paths
from export.artifact_record import ArtifactRecord, write_sidecar
from export.artifacts import MODEL_IDENTITY_KEYS, publish, set_onnx_metadata, sidecar_path, staging_dir
from export.errors import ToolkitError, one_line
from export.evaluation import (
    EvalSet,
    accuracy,
    check_logits_match,
    fidelity,
    load_eval_folder,
    load_eval_set,
    predict,
)
from export.images import list_images
from export.lrn import ONNX_TRANSLATIONS
from export.onnx_lrn import lower_lrn
from export.sample_images import validation_photos
from export.ui import step, warn
from export.weights import LoadedModel

# Newest opset that every stage here handles: torch's exporter, onnxsim, ONNX Runtime and its quantizer.
DEFAULT_OPSET = 21
SUPPORTED_OPSETS = range(17, 24)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
VALIDATION_TOLERANCE = BY_NAME["onnx"].tolerance  # max |ONNX - PyTorch| logit error, relative to the logit range


@dataclass
class OnnxExportOptions:
    out_dir: Path = paths.DEFAULT_OUT
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = False
    simplify: bool = True
    eval_dir: Path | None = None  # None: the shared ImageNet sample when the model is an ImageNet model
    evaluate: bool = True
    eval_exclude: frozenset[Path] = frozenset()  # e.g. the images an int8 model is calibrated on
    compare_source: bool = True  # also run ONNX-sourced weights' original file on the eval set
    name: str = paths.MODEL_STEM


@dataclass
class OnnxExportResult:
    path: Path
    sidecar: Path
    info: dict
    eval_set: EvalSet | None = None
    eval_logits: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress lines and registry warnings meant for its developers; hide them."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise ToolkitError(
            f"--opset {opset} is not supported (use {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1})"
        )


def torch_to_onnx(model: torch.nn.Module, preprocess_crop: int, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    """Export the eval-mode model with the dynamo exporter; LRN becomes one ONNX `LRN` node."""
    check_opset(opset)
    example = (torch.zeros(1, 3, preprocess_crop, preprocess_crop),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with _quiet_exporter():
        program = torch.onnx.export(
            model.eval(),
            example,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            custom_translation_table=ONNX_TRANSLATIONS,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    name_after_modules(proto)
    if dynamic_batch:
        for value in (*proto.graph.input, *proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def name_after_modules(proto: onnx.ModelProto) -> None:
    """Name nodes and their output tensors after the PyTorch modules they come from.

    The exporter names nodes `node_conv2d_7`; per-layer reports, `--exclude` and a person reading the
    graph need `inception3a.branch3.1.conv`. Its per-node metadata (stack traces with local paths)
    is dropped so that the file depends only on the model, not on where it was exported.
    """
    graph_outputs = {o.name for o in proto.graph.output}
    used: set[str] = set()
    renamed: dict[str, str] = {}
    for node in proto.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        parts = [s for s in (json.loads(scopes.replace("'", '"')) if scopes else []) if s]
        module, leaf = (parts[-2] if len(parts) > 1 else ""), (parts[-1] if parts else node.name)
        name = module or leaf
        if name in used:
            name = f"{module}/{leaf}" if module else leaf
        while name in used:
            name += "_"
        used.add(name)
        node.name = name
        del node.metadata_props[:]
        if len(node.output) == 1 and node.output[0] not in graph_outputs:
            renamed[node.output[0]] = name
            node.output[0] = name
    for node in proto.graph.node:
        for index, value in enumerate(node.input):
            if value in renamed:
                node.input[index] = renamed[value]
    kept_info = [v for v in proto.graph.value_info if v.name not in renamed]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept_info)


def simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim first; onnxslim when onnxsim fails or cannot prove its result equivalent."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if ok:
            return simplified, f"onnxsim {onnxsim.__version__}"
        warn("onnxsim could not verify its simplification; trying onnxslim")
    except Exception as exc:
        warn(f"onnxsim failed ({one_line(exc)}); trying onnxslim")
    import onnxslim

    return onnxslim.slim(proto), f"onnxslim {onnxslim.__version__}"


def _torch_logits(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(inputs)).numpy()


def validate_against_torch(model: torch.nn.Module, onnx_path: Path, inputs: np.ndarray) -> dict:
    """ONNX Runtime vs PyTorch on real images; raises when the error exceeds the tolerance."""
    expected = _torch_logits(model, inputs)
    got = OnnxRunner(onnx_path)(inputs)
    return check_logits_match(expected, got, VALIDATION_TOLERANCE, "exported ONNX disagrees with PyTorch", onnx_path)


def default_eval_dir(loaded: LoadedModel) -> Path | None:
    """The shared ImageNet sample, when the model predicts ImageNet classes."""
    return paths.imagenet_sample() if loaded.labels.wnids and loaded.num_classes == 1000 else None


def evaluate_export(
    loaded: LoadedModel, onnx_path: Path, eval_dir: Path, exclude: frozenset[Path], compare_source: bool
) -> tuple[dict, EvalSet, np.ndarray]:
    """Top-1/top-5 of the exported model; for ONNX-sourced weights also its fidelity to the source."""
    eval_set = load_eval_folder(eval_dir, loaded.preprocess, loaded.labels, exclude=set(exclude))
    logits = predict(throughput_runner(onnx_path), eval_set.inputs, "Evaluating ONNX")
    result: dict = {"dataset": str(eval_dir), "images": len(eval_set), "accuracy": accuracy(logits, eval_set.labels)}
    if eval_set.unreadable:
        result["unreadable"] = [f"{p.name}: {msg}" for p, msg in eval_set.unreadable]
    if exclude:
        result["excluded"] = len(exclude)
    if compare_source and loaded.source_format == "bvlc-onnx":
        source = predict(throughput_runner(loaded.source), eval_set.inputs, "Evaluating source ONNX")
        result["vs_source_onnx"] = {**fidelity(source, logits), "source_accuracy": accuracy(source, eval_set.labels)}
    return result, eval_set, logits


def export_onnx(loaded: LoadedModel, options: OnnxExportOptions) -> OnnxExportResult:
    """The whole `python -m export onnx` job; files appear in `out_dir` only when everything passed."""
    from export.inspect_onnx import count_onnx

    timings: dict[str, float] = {}
    check_opset(options.opset)
    if options.evaluate and options.eval_dir is not None:
        list_images(options.eval_dir)  # a missing eval folder fails now, not after the export
    final = Path(options.out_dir) / f"{options.name}{BY_NAME['onnx'].suffix}"
    with staging_dir(Path(options.out_dir)) as stage:
        started = time.perf_counter()
        step(f"exporting to ONNX (opset {options.opset}, {'dynamic' if options.dynamic_batch else 'static'} batch)")
        proto = torch_to_onnx(loaded.model, loaded.preprocess.crop, options.opset, options.dynamic_batch)
        simplifier = "none"
        if options.simplify:
            step("simplifying")
            proto, simplifier = simplify(proto)
        lowered_lrn = lower_lrn(proto)  # ONNX Runtime's LRN kernel is scalar (export/onnx_lrn.py)
        onnx.checker.check_model(proto, full_check=True)
        staged = stage / final.name
        onnx.save(proto, str(staged))
        timings["export_s"] = time.perf_counter() - started

        started = time.perf_counter()
        photos = validation_photos()
        val_set = load_eval_set(photos, None, loaded.preprocess, None, "Loading validation photos")
        validation = validate_against_torch(loaded.model, staged, val_set.inputs)
        validation["photos"] = sorted(p.name for p in val_set.paths)
        timings["validate_s"] = time.perf_counter() - started

        evaluation, eval_set, eval_logits = None, None, None
        eval_dir = options.eval_dir or default_eval_dir(loaded)
        if options.evaluate and eval_dir is not None:
            started = time.perf_counter()
            evaluation, eval_set, eval_logits = evaluate_export(
                loaded, staged, Path(eval_dir), options.eval_exclude, options.compare_source
            )
            timings["evaluate_s"] = time.perf_counter() - started
        elif options.evaluate:
            warn("no evaluation set (pass --eval DIR); accuracy is not recorded in the artifact")

        counts = count_onnx(proto)
        batch = "batch" if options.dynamic_batch else 1
        record = ArtifactRecord(
            format="onnx",
            precision="fp32",
            **loaded.describe(),
            preprocess=loaded.preprocess.to_dict(),
            labels=loaded.labels.to_dict(),
            input={"name": INPUT_NAME, "shape": [batch, 3, *[loaded.preprocess.crop] * 2], "dtype": "float32"},
            output={
                "name": OUTPUT_NAME,
                "shape": [batch, loaded.num_classes],
                "meaning": "logits; apply softmax for probabilities",
            },
            opset=options.opset,
            simplifier=simplifier,
            lrn={"lowered": lowered_lrn, "as": "Mul/Pad/Slice/Add/Sqrt/Div (export/onnx_lrn.py)"},
            params=counts.params,
            macs=counts.macs,
            validation=validation,
            evaluation=evaluation,
            warnings=loaded.warnings,
            producer={"toolkit": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
        )
        identity = record.to_dict()
        set_onnx_metadata(
            proto,
            {
                **{k: identity[k] for k in MODEL_IDENTITY_KEYS},
                "weights_sha256": identity["weights_sha256"] or "",  # ONNX metadata holds strings only
                "preprocess": loaded.preprocess.to_json(),
                "labels": loaded.labels.to_dict(),
                "validation": validation,
                "evaluation": evaluation or {},
            },
        )
        proto.producer_name, proto.producer_version = "googlenet-edge", __version__
        onnx.save(proto, str(staged))
        record = record.for_file(staged)
        publish({staged: final, write_sidecar(staged, record): sidecar_path(final)})
    return OnnxExportResult(final, sidecar_path(final), record.to_dict(), eval_set, eval_logits, timings)
