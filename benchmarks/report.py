"""The benchmark report: its JSON Schema (one documented contract for `run`, the device runner, `merge`,
`gate`, `compare` and `--plot`) and loading a report with a one-line error when it does not fit. The fields
the metrics are read from get their schema from `benchmarks.metrics`."""

from __future__ import annotations

from pathlib import Path

from benchmarks.metrics import schema_properties
from edge_runtime.formats import FORMATS, RUNTIMES
from export.artifacts import read_json
from export.errors import ToolkitError, check_schema

_NUMBER = {"type": "number"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}

_LATENCY = {
    "type": "object",
    "description": "milliseconds over the timed runs at one thread count",
    "required": ["mean", "runs"],
    "properties": {
        **{k: _NULLABLE_NUMBER for k in ("p90", "p99", "std", "min", "max", "load_ms")},
        **schema_properties("latency_ms.*"),
        "first_inference_ms": _NULLABLE_NUMBER,
        "mean": _NUMBER,
        "runs": {"type": "integer", "minimum": 1},
    },
}

_VS_REFERENCE = {
    "type": "object",
    "required": ["reference", "top1_agreement"],
    "properties": {
        "reference": {"type": ["string", "null"]},
        **schema_properties("accuracy.vs_reference"),
        "top5_drop_pp": _NUMBER,
        "kl_mean": _NUMBER,
        "cosine_mean": _NUMBER,
        "top5_overlap": _NUMBER,
    },
}

_ACCURACY = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {"type": "integer", "minimum": 1},
        "labelled": {"type": "integer"},
        **schema_properties("accuracy"),
        "top5": {"type": "number", "minimum": 0, "maximum": 1},
        "vs_reference": _VS_REFERENCE,
    },
}

ARTIFACT_SCHEMA = {
    "type": "object",
    "required": ["name", "path", "format", "precision", "device", "size_bytes", "latency_ms", "peak_rss_mb"],
    "properties": {
        "name": {"type": "string", "description": "file name, e.g. googlenet.int8.onnx"},
        "path": {"type": "string"},
        "format": {"enum": [f.name for f in FORMATS]},
        "precision": {"enum": ["fp32", "fp16", "int8", "dynamic"]},
        "device": {"type": "string", "description": "where it was measured (hostname or board model)"},
        **schema_properties(""),  # size_bytes, macs, activation_bytes, peak_rss_mb (benchmarks/metrics.py)
        "params": {"type": ["integer", "null"]},
        "ops": {"type": "object", "additionalProperties": {"type": "integer"}},
        "load_ms": _NULLABLE_NUMBER,
        "first_inference_ms": _NULLABLE_NUMBER,
        "latency_ms": {
            "type": "object",
            "description": "per thread count (keys '1', '2', ...); empty when not timed (see `timing`)",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": _LATENCY,
        },
        "throughput": {
            "type": "object",
            "required": ["threads", "images_per_s"],
            "properties": {"threads": {"type": "integer"}, "images_per_s": _NUMBER},
        },
        "kernels": {
            "type": "object",
            "description": "what the runtime ran on this device: compute ops in int8 vs float kernels",
            "required": ["runtime", "compute_ops", "int8_compute_ops"],
            "properties": {
                "runtime": {"enum": list(RUNTIMES)},
                "compute_ops": {"type": "integer"},
                "int8_compute_ops": {"type": "integer"},
                "float_compute_ops": {"type": "integer"},
                "int8_mac_share": {"type": "number", "minimum": 0, "maximum": 1},
                "delegated_ops": {"type": "integer", "description": "LiteRT: ops run by XNNPACK"},
                "total_ops": {"type": "integer"},
                "ops": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "timing": {"type": "string", "description": "present when not timed, and why (e.g. an emulated CPU)"},
        "ceiling": {
            "type": "object",
            "description": "per thread count: achieved GMAC/s (macs / median latency) and its share of the "
            "report's ceiling for this runtime and precision (null without one)",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {
                "type": "object",
                "required": ["gmacs", "share"],
                "properties": {"gmacs": _NUMBER, "share": _NULLABLE_NUMBER},
            },
        },
        "runtime": {
            "type": "object",
            "description": "how the runtime ran it: threads; for LiteRT, xnnpack and delegate_nodes",
            "properties": {
                "threads": {"type": "integer"},
                "xnnpack": {"type": "boolean"},
                "delegate_nodes": {"type": "integer"},
            },
        },
        "baseline_rss_mb": _NULLABLE_NUMBER,
        "accuracy": {
            "oneOf": [
                {"type": "null"},
                {**_ACCURACY, "properties": {**_ACCURACY["properties"], "emulated": _ACCURACY}},
            ]
        },
    },
}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "googlenet-edge benchmark report",
    "type": "object",
    "required": ["schema_version", "host", "artifacts"],
    "properties": {
        "schema_version": {"const": 1},
        "host": {
            "type": "object",
            "required": ["cpu", "cores", "isa"],
            "properties": {
                "cpu": {"type": "string"},
                "cores": {"type": ["integer", "null"]},
                "isa": {"type": "array", "items": {"type": "string"}},
                "runtimes": {"type": "object"},
                "machine": {"type": "string", "description": "platform.machine() where it ran, e.g. aarch64"},
                "emulation": {
                    "type": "object",
                    "description": "present for runs under an emulator: its CPU model",
                    "properties": {"qemu_cpu": {"type": "string"}, "emulator": {"type": "string"}},
                },
            },
        },
        "hosts": {"type": "object", "description": "merged reports: device name -> its host facts"},
        "settings": {"type": "object"},
        "ceiling": {
            "type": "object",
            "description": "the machine's measured limit: one 3x3 convolution (macs) per runtime and precision, "
            "GMAC/s per thread count (edge_runtime/ceiling.py)",
            "required": ["macs", "gmacs"],
            "properties": {
                "macs": {"type": "integer"},
                "gmacs": {
                    "type": "object",
                    "additionalProperties": {"type": "object", "additionalProperties": {"type": "object"}},
                },
            },
        },
        "ceilings": {"type": "object", "description": "merged reports: device name -> its ceiling"},
        "artifacts": {"type": "array", "items": ARTIFACT_SCHEMA},
    },
}


def validate_report(report: dict, source: str | Path | None = None) -> dict:
    """`report` unchanged when it fits REPORT_SCHEMA; otherwise one ToolkitError naming the first problem."""
    return check_schema(report, REPORT_SCHEMA, "a benchmark report", source)  # type: ignore[return-value]


def load_report(path: Path) -> dict:
    if not Path(path).is_file():
        raise ToolkitError("report not found", path)
    return validate_report(read_json(path), path)
