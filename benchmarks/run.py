"""`python -m benchmarks run`: every artifact side by side (size, MACs, memory, latency, accuracy drift).

Gathers, never re-implements: counting, ops and activation memory from each format's row in
`edge_runtime.formats`, latency and peak RSS from `edge_runtime.device_runner` (in a fresh subprocess per
artifact, the same code a device runs), preprocessing and labels from each artifact's own sidecar.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.ceiling_models import ceiling_models_dir
from benchmarks.report import validate_report
from edge_runtime import ceiling, device_runner, formats, hostinfo, kernel_coverage, metrics
from edge_runtime.android_bench import guess_precision
from export import __version__, ui
from export.artifact_record import read_sidecar
from export.artifacts import sidecar_path
from export.errors import ToolkitError
from export.evaluation import EvalSet, load_eval_set, predict
from export.images import list_images
from export.labels import LabelSet
from export.paths import MODEL_STEM
from export.preprocess import Preprocess

DEFAULT_ARTIFACTS = Path("artifacts")


@dataclass
class RunOptions:
    artifacts: list[Path] = field(default_factory=list)
    reference: Path | None = None
    eval_dir: Path | None = None
    eval_size: int | None = None
    threads: list[int] = field(default_factory=lambda: [1, 2])
    runs: int = 50
    warmup: int = 5
    layers: bool = False
    seed: int = 0


def discover(paths: list[Path]) -> list[Path]:
    """The models named (folders expand to the models inside), in a stable order; default `artifacts/`."""
    found: list[Path] = []
    for path in paths or [DEFAULT_ARTIFACTS]:
        path = Path(path)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if formats.is_model(p) and p.is_file())
        elif path.is_file():
            if not formats.is_model(path):
                raise ToolkitError(f"not a model (expected {formats.EXPECTED})", path)
            found.append(path)
        else:
            raise ToolkitError("no such file or folder", path)
    if not found:
        given = paths[0] if paths else DEFAULT_ARTIFACTS
        raise ToolkitError(f"no {formats.EXPECTED} models to benchmark", given)
    return list(dict.fromkeys(found))


def describe_artifact(path: Path) -> dict:
    """Format, precision, preprocessing, labels and calibration record: from the sidecar, else the metadata
    inside the file."""
    row = formats.format_of(path)
    info = read_sidecar(path) if sidecar_path(path).is_file() else {}
    if not info:
        info = row.read_metadata(path)
    if "preprocess" not in info:
        raise ToolkitError("no preprocessing recorded (no sidecar JSON, no metadata): re-export it", path)
    _check_parent(path, info)
    precision = info.get("precision") or guess_precision(path.name)
    return {
        "format": row.name,
        "precision": precision,
        "preprocess": info["preprocess"],
        "labels": info.get("labels"),
        "calibration": info.get("calibration") or {},
    }


def _check_parent(path: Path, info: dict) -> None:
    """An int8 model whose FP32 parent beside it has changed since (a later export of other weights)
    would be measured against the wrong reference: refused, in one line."""
    recorded, parent = info.get("fp32_sha256"), info.get("fp32_model")
    if not recorded or not parent or not (path.parent / parent).is_file():
        return
    if metrics.file_sha256(path.parent / parent) != recorded:
        raise ToolkitError(
            f"was quantized from another {parent} than the one beside it (sha256 differs); re-run the int8 export",
            path,
        )


def pick_reference(artifacts: list[Path], described: dict[Path, dict], explicit: Path | None) -> Path | None:
    """`--reference`, else the reference format's FP32 model among the artifacts (or beside them)."""
    if explicit is not None:
        if not explicit.is_file():
            raise ToolkitError("reference model not found", explicit)
        return explicit
    for path in artifacts:
        if formats.BY_NAME[described[path]["format"]].reference and described[path]["precision"] == "fp32":
            return path
    beside = artifacts[0].parent / f"{MODEL_STEM}{formats.REFERENCE.suffix}"
    return beside if beside.is_file() else None


class EvalInputs:
    """The evaluation images, preprocessed once per distinct preprocessing (ONNX fp32/int8 share one)."""

    def __init__(self, paths: list[Path], root: Path | None) -> None:
        self.paths, self.root = paths, root
        self._cache: dict[str, EvalSet] = {}

    def for_preprocess(self, preprocess: dict, labels: dict | None) -> EvalSet:
        key = json.dumps(preprocess, sort_keys=True) + json.dumps(labels, sort_keys=True)
        if key not in self._cache:
            label_set = LabelSet.from_dict(labels) if labels else None
            self._cache[key] = load_eval_set(
                self.paths, self.root, Preprocess.from_dict(preprocess), label_set, "Loading eval images"
            )
        return self._cache[key]


def calibration_photos(described: dict[Path, dict], eval_dir: Path) -> set[Path]:
    """The photos of `eval_dir` that any of the `described` artifacts (`describe_artifact`) was calibrated on:
    an int8 model judged on its own calibration photos would look better than it is."""
    from quantize.calibration import calibrated_on

    photos: set[Path] = set()
    for path, info in described.items():
        found = calibrated_on(info["calibration"], eval_dir)
        if found is None:
            ui.step(f"warning: {eval_dir} changed since {path.name} was calibrated on it; its photos stay in")
        photos |= found or set()
    return photos


def eval_paths(eval_dir: Path, size: int | None, seed: int, exclude: set[Path] = frozenset()) -> list[Path]:
    """`size` photos of `eval_dir` (stratified, seeded), never one of `exclude` (calibration photos)."""
    from quantize.calibration import select_stratified

    images = [p for p in list_images(eval_dir).images if p.resolve() not in exclude]
    if exclude:
        ui.step(f"leaving out the {len(exclude)} photos of {eval_dir} the int8 models were calibrated on")
    if not images:
        raise ToolkitError("no images to evaluate on", eval_dir)
    if size is not None and size < len(images):
        return select_stratified(images, Path(eval_dir), size, seed)
    return images


def evaluation_runner(path: Path, emulate: bool = False):
    return formats.format_of(path).eval_runner(path, emulate=emulate)


def static_facts(path: Path, layers: bool) -> dict:
    """What the graph says: parameters, MACs, ops, activation memory (the same on every device)."""
    row = formats.format_of(path)
    counts = row.counter(path)
    facts: dict = {
        "params": counts.params,
        "macs": counts.macs,
        "ops": row.op_histogram(path),
        "activation_bytes": row.activation_memory(path)["activation_bytes"],
    }
    if layers:
        facts["layers"] = counts.to_dict()["layers"]
    facts["layer_macs"] = [[layer.name, layer.macs] for layer in counts.layers]  # for the kernel coverage
    return facts


def run(options: RunOptions) -> dict:
    """Benchmark every artifact; the report dict (validated against the documented schema)."""
    artifacts = discover(options.artifacts)
    described = {path: describe_artifact(path) for path in artifacts}
    reference = pick_reference(artifacts, described, options.reference)
    facts = hostinfo.host_facts()
    device = facts["device"] or facts["hostname"]
    inputs = None
    if options.eval_dir is not None:
        held_out = calibration_photos(described, options.eval_dir)
        inputs = EvalInputs(eval_paths(options.eval_dir, options.eval_size, options.seed, held_out), options.eval_dir)
    reference_logits = None
    if inputs is not None and reference is not None:
        ref_info = described.get(reference) or describe_artifact(reference)
        ref_set = inputs.for_preprocess(ref_info["preprocess"], ref_info["labels"])
        reference_logits = predict(
            evaluation_runner(reference), ref_set.inputs, f"Evaluating {reference.name} (reference)"
        )
    entries = []
    with tempfile.TemporaryDirectory(prefix="googlenet-bench-") as scratch:
        for path in artifacts:
            info = described[path]
            ui.step(f"benchmarking {path.name} ({info['format']} {info['precision']})")
            entry: dict = {
                "name": path.name,
                "path": str(path),
                "format": info["format"],
                "precision": info["precision"],
                "device": device,
                "size_bytes": path.stat().st_size,
                **static_facts(path, options.layers),
            }
            sample = _sample(path, info, inputs)
            sample_path = Path(scratch) / f"{path.name}.sample.npy"
            np.save(sample_path, sample)
            try:
                entry.update(
                    device_runner.measure_in_subprocess(
                        path, sample_path, options.threads, options.runs, options.warmup
                    )
                )
            except device_runner.RunnerError as exc:
                raise ToolkitError(str(exc)) from None
            entry["accuracy"] = _accuracy(path, info, inputs, reference, reference_logits)
            entry["kernels"] = kernel_coverage.coverage(path, sample, entry.pop("layer_macs"))
            warn_if_mostly_float(entry)
            entries.append(entry)
    ui.step("measuring this machine's ceiling (one large convolution per runtime and precision)")
    ceiling_gmacs = ceiling.measure_ceiling(options.threads, ceiling.runtimes_of(entries), folder=ceiling_models_dir())
    ceiling.attach_ceiling(entries, ceiling_gmacs)
    report = {
        "schema_version": device_runner.SCHEMA_VERSION,
        "tool": {"name": "googlenet-edge", "version": __version__},
        "host": facts,
        "settings": {
            "threads": options.threads,
            "runs": options.runs,
            "warmup": options.warmup,
            "eval": str(options.eval_dir) if options.eval_dir else None,
            "eval_images": len(inputs.paths) if inputs else 0,
            "reference": reference.name if reference else None,
        },
        "ceiling": {"macs": ceiling.CEILING_MACS, "gmacs": ceiling_gmacs},
        "artifacts": entries,
    }
    return validate_report(metrics.round_floats(report))  # type: ignore[arg-type]


def _sample(path: Path, info: dict, inputs: EvalInputs | None) -> np.ndarray:
    """One image in the artifact's own input convention: the first eval image, else a bundled photo."""
    if inputs is not None:
        return inputs.for_preprocess(info["preprocess"], info["labels"]).inputs[:1]
    from export.sample_images import validation_photos

    photos = load_eval_set(validation_photos()[:1], None, Preprocess.from_dict(info["preprocess"]), None, "photo")
    return photos.inputs[:1]


def _accuracy(path: Path, info: dict, inputs, reference: Path | None, reference_logits) -> dict | None:
    if inputs is None:
        return None
    eval_set = inputs.for_preprocess(info["preprocess"], info["labels"])
    ref_name = reference.name if reference else None
    if reference is not None and path.resolve() == reference.resolve():
        logits = reference_logits
    else:
        logits = predict(evaluation_runner(path), eval_set.inputs, f"Evaluating {path.name}")
    block = metrics.accuracy_block(logits, eval_set.labels, reference_logits, ref_name)
    if formats.has_emulated_run(info["format"], info["precision"]):
        emulated = predict(evaluation_runner(path, emulate=True), eval_set.inputs, f"Evaluating {path.name} (emulated)")
        block["emulated"] = metrics.accuracy_block(emulated, eval_set.labels, reference_logits, ref_name)
    return block


def warn_if_mostly_float(entry: dict) -> None:
    """An int8 model whose multiply-adds mostly run in float kernels here: its latency is not int8's."""
    if entry["precision"] == "int8" and kernel_coverage.mostly_float(entry.get("kernels")):
        share = entry["kernels"]["int8_mac_share"]
        ui.warn(f"{entry['name']}: only {share:.0%} of its multiply-adds run in int8 kernels on {entry['device']}")
