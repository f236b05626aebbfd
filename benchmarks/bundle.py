"""`python -m benchmarks bundle` / `merge`: measure on the device itself, report on the host.

The bundle is a tarball a Raspberry Pi (or any Linux/macOS box) runs with only numpy and a runtime:
the models with their sidecars, the evaluation images already preprocessed to `.npy` per model input
convention, the FP32 reference outputs for those inputs, `run.py` (= `edge_runtime/device_runner.py`)
and, for Android phones, `android/run_android.py` (= `edge_runtime/android_bench.py`) driving TFLite's
`benchmark_model` over adb. `manifest.json` lists every file with its sha256; the runner checks them
before it runs. Same inputs give a byte-identical tarball (sorted entries, fixed times and owners).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np

from benchmarks.ceiling_models import ceiling_models_dir
from benchmarks.report import validate_report
from benchmarks.run import (
    EvalInputs,
    calibration_photos,
    describe_artifact,
    discover,
    eval_paths,
    evaluation_runner,
    pick_reference,
    static_facts,
)
from edge_runtime import device_runner, formats, metrics
from export import __version__, ui
from export.artifacts import sidecar_path, staging_dir
from export.errors import ToolkitError
from export.evaluation import predict

RUNTIME_CORE = Path(device_runner.__file__).resolve().parent  # the standalone files the bundle ships
BUNDLE_ROOT = "googlenet-bench"
# The runtime core `run.py` imports (as the `edge_runtime` package it stands in for): standard library, numpy, runtimes.
ANDROID_BESIDE_RUN = ("benchmark_model_output.py", "hostinfo.py")  # what android/run_android.py imports
SHIPPED_BESIDE_RUN = ("formats.py", "errors.py", "metrics.py", "hostinfo.py", "kernel_coverage.py", "ceiling.py")
DEVICE_INSTALL = "pip install numpy " + " ".join(f.package for f in formats.FORMATS)  # what run.py needs on a device

README = """\
# GoogLeNet benchmark bundle

Made by googlenet-edge {version}: {models} model(s), {images} preprocessed evaluation images with their
labels and the FP32 reference outputs. Nothing here needs PyTorch, TensorFlow, an image library or a network.

## Raspberry Pi (or any Linux / macOS machine with Python >= 3.9)

    tar xf {archive}
    {install}
    python3 {root}/run.py

`run.py` first checks every file against `manifest.json` (sha256) and refuses a corrupted bundle. It then
measures each model in a fresh process (load time, first inference, latency median/p90/p99 per thread
count, peak RSS), computes accuracy and agreement with the FP32 reference on the bundled inputs, prints a
table and writes `results-<hostname>.json` in the same schema as `python -m benchmarks run`.
Options: `--threads 1,2,4 --runs 50 --warmup 5 --only googlenet.int8.tflite --device "Pi 5" --out FILE`;
`--accuracy-only` skips the timings (what `python -m benchmarks emulate` uses under QEMU, whose times mean nothing).
Install only the runtime you need: {per_format}.

Back on the host: `python -m benchmarks merge report.json results-*.json --out merged.json`, then
`python -m benchmarks gate merged.json` or `python -m benchmarks plot merged.json`.

## Android phone (TFLite's benchmark_model over adb)

Download the prebuilt `android_aarch64_benchmark_model` (see https://ai.google.dev/edge/litert/models/measurement),
connect the phone with USB debugging on, then on the computer:

    python3 {root}/android/run_android.py --binary ./android_aarch64_benchmark_model --models {root}/models

It pushes the binary and the `.tflite` files to /data/local/tmp, runs benchmark_model at each thread count,
parses init time, latency and memory footprint, and writes `results-android-<model>.json` (same schema).
"""


def _preprocess_key(info: dict) -> str:
    text = json.dumps(info["preprocess"], sort_keys=True)
    return f"{info['preprocess'].get('layout', 'NCHW').lower()}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def build_bundle(
    artifacts: list[Path], eval_dir: Path, eval_size: int | None, out: Path, seed: int = 0
) -> tuple[Path, dict]:
    """Write the tarball (atomically) and return its path and manifest."""
    models = discover(artifacts)
    described = {path: describe_artifact(path) for path in models}
    reference = pick_reference(models, described, None)
    if reference is None:
        raise ToolkitError("the bundle needs the FP32 ONNX reference (googlenet.onnx) among or beside the models")
    ref_info = described.get(reference) or describe_artifact(reference)
    held_out = calibration_photos(described, eval_dir)
    inputs = EvalInputs(eval_paths(eval_dir, eval_size, seed, held_out), Path(eval_dir))
    ref_set = inputs.for_preprocess(ref_info["preprocess"], ref_info["labels"])
    reference_outputs = predict(evaluation_runner(reference), ref_set.inputs, f"Reference outputs ({reference.name})")
    with staging_dir(out.parent) as stage:
        root = stage / BUNDLE_ROOT
        (root / "models").mkdir(parents=True)
        (root / "inputs").mkdir()
        np.save(root / "labels.npy", ref_set.labels.astype(np.int64))
        np.save(root / "reference_outputs.npy", reference_outputs.astype(np.float32))
        entries = []
        for path in models:
            info = described[path]
            key = _preprocess_key(info)
            if not (root / "inputs" / f"{key}.npy").exists():
                data = inputs.for_preprocess(info["preprocess"], info["labels"]).inputs.astype(np.float32)
                np.save(root / "inputs" / f"{key}.npy", data)
                np.save(root / "inputs" / f"{key}.sample.npy", data[:1])
            shutil.copyfile(path, root / "models" / path.name)
            if sidecar_path(path).is_file():
                shutil.copyfile(sidecar_path(path), root / "models" / sidecar_path(path).name)
            ui.step(f"bundling {path.name}")
            entries.append(
                {
                    "name": path.name,
                    "file": f"models/{path.name}",
                    "format": info["format"],
                    "precision": info["precision"],
                    "size_bytes": path.stat().st_size,
                    **static_facts(path, layers=False),  # with layer_macs, for the kernel coverage
                    "inputs": f"inputs/{key}.npy",
                    "sample": f"inputs/{key}.sample.npy",
                }
            )
        shutil.copyfile(RUNTIME_CORE / "device_runner.py", root / "run.py")
        for name in SHIPPED_BESIDE_RUN:
            shutil.copyfile(RUNTIME_CORE / name, root / name)
        shutil.copytree(ceiling_models_dir(), root / "ceiling")
        (root / "android").mkdir()
        shutil.copyfile(RUNTIME_CORE / "android_bench.py", root / "android" / "run_android.py")
        for module in ANDROID_BESIDE_RUN:
            shutil.copyfile(RUNTIME_CORE / module, root / "android" / module)
        readme = README.format(
            version=__version__,
            models=len(models),
            images=len(ref_set.labels),
            archive=out.name,
            root=BUNDLE_ROOT,
            install=DEVICE_INSTALL,
            per_format=", ".join(f"`{f.package}` for `{f.suffix}`" for f in formats.FORMATS),
        )
        (root / "README.md").write_text(readme, encoding="utf-8")
        files = {p.relative_to(root).as_posix(): metrics.file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
        manifest = {
            "schema_version": device_runner.SCHEMA_VERSION,
            "created_by": f"googlenet-edge {__version__}",
            "reference": reference.name,
            "reference_outputs": "reference_outputs.npy",
            "labels": "labels.npy",
            "settings": {
                "eval": str(eval_dir),
                "eval_images": len(ref_set.labels),
                "left_out_calibration_photos": len(held_out),
                "reference": reference.name,
            },
            "models": entries,
            "files": files,
        }
        (root / device_runner.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        staged = stage / out.name
        _write_tarball(root, staged)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(staged, tmp)
        os.replace(tmp, out)
    return out, manifest


def _write_tarball(root: Path, target: Path) -> None:
    """A reproducible .tar.gz: sorted entries, zero times, neutral owners."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() or info.name.endswith(".py") else 0o644
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=root.name, recursive=False, filter=clean)
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=f"{root.name}/{path.relative_to(root).as_posix()}", recursive=False, filter=clean)
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buffer.getvalue())


def merge_reports(reports: list[tuple[Path, dict]]) -> dict:
    """One report, one row per (artifact, device); `hosts` keeps every device's facts."""
    if not reports:
        raise ToolkitError("merge needs at least one report")
    seen: dict[tuple[str, str], Path] = {}
    merged_artifacts, hosts, ceilings = [], {}, {}
    for path, report in reports:
        for artifact in report["artifacts"]:
            key = (artifact["name"], artifact["device"])
            if key in seen:
                raise ToolkitError(f"{artifact['name']} on {artifact['device']} is also in {seen[key]}", path)
            seen[key] = path
            merged_artifacts.append(artifact)
            hosts.setdefault(artifact["device"], report["host"])
            if report.get("ceiling"):
                ceilings.setdefault(artifact["device"], report["ceiling"])
    first = reports[0][1]
    merged = {
        "schema_version": device_runner.SCHEMA_VERSION,
        "host": first["host"],
        "hosts": hosts,
        "settings": {**(first.get("settings") or {}), "merged_from": [str(p) for p, _ in reports]},
        **({"ceilings": ceilings} if ceilings else {}),
        "artifacts": merged_artifacts,
    }
    return validate_report(merged)
