"""The sidecar (`<model>.json` beside every artifact): one typed record and the JSON Schema it derives.

Every writer (`export.onnx_export`, `quantize.onnx_int8`, `export.tflite_export`) builds an `ArtifactRecord`
and calls `write_sidecar`; readers call `read_sidecar`. Both validate against `SIDECAR_SCHEMA`, which is
generated from the record's fields, so a new sidecar key is one field here. The format rules live here too:
floats at 7 significant digits except the exact preprocessing, size and sha256 taken from the final file.
"""

# ruff: noqa: RUF009  (`_field` is `dataclasses.field` with the schema attached: it returns no shared value)
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edge_runtime.formats import FORMATS
from edge_runtime.metrics import file_sha256, round_floats
from export.artifacts import MODEL_IDENTITY_KEYS, read_json, sidecar_path, write_json
from export.errors import check_schema


class _Unset:
    """A field the sidecar leaves out (None is written as null)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
_OBJECT = {"type": "object"}
_NULLABLE_OBJECT = {"type": ["object", "null"]}
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape"],
    "properties": {"name": _STRING, "shape": {"type": "array"}, "dtype": _STRING},
}


def _field(schema: dict, description: str, exact: bool = False) -> Any:
    """A record field: left out unless set; `schema` and `description` go into SIDECAR_SCHEMA."""
    return field(default=UNSET, metadata={"schema": {**schema, "description": description}, "exact": exact})


@dataclass(frozen=True, kw_only=True)
class ArtifactRecord:
    """What a sidecar holds, for every format; which fields each kind must have: `REQUIRED`."""

    format: str = field(metadata={"schema": {"enum": [f.name for f in FORMATS], "description": "file format"}})
    precision: str = field(
        metadata={"schema": {"enum": ["fp32", "fp16", "int8", "dynamic"], "description": "weights/compute"}}
    )
    # the file itself (`for_file`)
    artifact: str = _field(_STRING, "file name, e.g. googlenet.int8.onnx")
    size_bytes: int = _field({"type": "integer", "minimum": 1}, "file size")
    sha256: str = _field(_SHA256, "of the file as published")
    # which network and weights (`export.artifacts.MODEL_IDENTITY_KEYS`)
    arch: str = _field(_STRING, "network variant (export.model)")
    num_classes: int = _field({"type": "integer", "minimum": 1}, "classifier size")
    weights: str = _field(_STRING, "weights file, or random-init")
    weights_format: str | None = _field(_NULLABLE_STRING, "how the weights file was read")
    weights_sha256: str | None = _field(_NULLABLE_STRING, "of the weights file (null: random init)")
    params: int = _field(_COUNT, "parameters")
    macs: int = _field(_COUNT, "multiply-adds per image")
    # how to feed it and read it
    preprocess: dict = _field(
        {**_OBJECT, "required": ["color", "scale", "mean", "std", "resize", "crop", "layout"]},
        "export.preprocess.Preprocess, exact (never rounded)",
        exact=True,
    )
    labels: dict | None = _field(
        {**_NULLABLE_OBJECT, "required": ["names"]}, "class names (and ImageNet wnids) by index"
    )
    io: str = _field({"enum": ["float32", "int8", "uint8"]}, "TFLite input/output type")
    input: dict = _field(_TENSOR, "the input tensor")
    output: dict = _field(_TENSOR, "the output tensor")
    # how it was made
    opset: int = _field({"type": "integer"}, "ONNX opset")
    simplifier: str = _field(_STRING, "onnxsim/onnxslim and version, or none")
    lrn: dict = _field(_OBJECT, "the LRN layers written as elementary ops (export/onnx_lrn.py)")
    converter: str = _field(_STRING, "how the .tflite was converted")
    reference: str = _field(_STRING, "the FP32 ONNX model a .tflite was checked against")
    ops: dict = _field({**_OBJECT, "additionalProperties": {"type": "integer"}}, "TFLite op histogram")
    producer: dict = _field({**_OBJECT, "required": ["toolkit"]}, "tool versions")
    warnings: list = _field({"type": "array", "items": _STRING}, "what the user was warned about")
    # the int8 model's parent and recipe
    fp32_model: str = _field(_STRING, "the FP32 model it was quantized from")
    fp32_sha256: str = _field(_SHA256, "that model's sha256 (benchmarks refuse a changed parent)")
    fp32_size_bytes: int = _field({"type": "integer", "minimum": 1}, "that model's size")
    size_ratio: float = _field({"type": "number", "minimum": 0}, "size / the FP32 file's, 4 decimals")
    quantization: dict = _field(_OBJECT, "the recipe and its settings")
    calibration: dict = _field({**_OBJECT, "required": ["images"]}, "the calibration set")
    # what was measured at export time
    validation: dict = _field(
        {**_OBJECT, "required": ["passed", "max_abs_logit_diff", "tolerance", "images"]},
        "logits vs the source (PyTorch, or the FP32 ONNX for .tflite) on real photos",
    )
    evaluation: dict | None = _field(_NULLABLE_OBJECT, "top-1/top-5 on the eval set (null: not evaluated)")
    drift: dict | None = _field(_NULLABLE_OBJECT, "drift vs the FP32 model (null: not evaluated)")
    kernels: dict | None = _field(
        {**_NULLABLE_OBJECT, "required": ["runtime", "compute_ops", "int8_compute_ops"]},
        "int8 kernel coverage on the export host",
    )
    host: dict = _field({**_OBJECT, "required": ["cpu", "isa"]}, "the export host")

    def for_file(self, path: Path) -> ArtifactRecord:
        """This record describing `path` as it is now (name, size, sha256): the last step before writing."""
        return replace(self, artifact=path.name, size_bytes=path.stat().st_size, sha256=file_sha256(path))

    def to_dict(self) -> dict:
        """The sidecar's content: set fields only; floats rounded (`round_floats`) except exact ones."""
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not UNSET:
                data[f.name] = value if f.metadata.get("exact") else round_floats(value)
        return data


# Which fields each kind of artifact must have, beyond format and precision: (format, precision or None = any).
# An int8 ONNX inherits its identity from the FP32 file's metadata (none when that file has none); a .tflite
# records no params/MACs (`benchmarks run` counts them from the graph).
_FILE = ("artifact", "size_bytes", "sha256")
_IDENTITY = tuple(key for key in MODEL_IDENTITY_KEYS if key not in ("params", "macs"))
REQUIRED: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("onnx", "fp32"): (
        *_FILE, *MODEL_IDENTITY_KEYS, "preprocess", "labels", "input", "output", "opset", "simplifier", "lrn",
        "validation", "evaluation", "warnings", "producer",
    ),
    ("onnx", "int8"): (
        *_FILE, "fp32_model", "fp32_sha256", "fp32_size_bytes", "size_ratio", "quantization", "calibration",
        "drift", "kernels", "host",
    ),
    ("tflite", None): (
        *_FILE, *_IDENTITY, "preprocess", "labels", "io", "input", "output", "ops", "converter", "reference",
        "producer",
    ),
    ("tflite", "fp32"): ("validation",),
    **{("tflite", quantized): ("size_ratio",) for quantized in ("int8", "fp16", "dynamic")},
}  # fmt: skip


def _schema() -> dict:
    """SIDECAR_SCHEMA from the record's fields and `REQUIRED` (extra keys allowed: older sidecars stay valid)."""
    rules = []
    for (fmt, precision), required in REQUIRED.items():
        when = {"format": {"const": fmt}, **({"precision": {"const": precision}} if precision else {})}
        rules.append({"if": {"properties": when}, "then": {"required": list(required)}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "googlenet-edge artifact sidecar",
        "type": "object",
        "required": ["format", "precision"],
        "properties": {f.name: f.metadata["schema"] for f in fields(ArtifactRecord)},
        "allOf": rules,
    }


SIDECAR_SCHEMA = _schema()


def validate_sidecar(data: object, source: str | Path | None = None) -> dict:
    """`data` unchanged when it fits SIDECAR_SCHEMA; otherwise one ToolkitError naming the file and the problem."""
    return check_schema(data, SIDECAR_SCHEMA, "an artifact sidecar", source)  # type: ignore[return-value]


def write_sidecar(artifact: Path, record: ArtifactRecord) -> Path:
    """Validate `record` and write it beside `artifact` (stable JSON, atomically); the sidecar's path."""
    path = sidecar_path(artifact)
    write_json(path, validate_sidecar(record.to_dict(), path))
    return path


def read_sidecar(artifact: Path) -> dict:
    """The validated sidecar of `artifact` (a bad one is the user's one-line error naming it)."""
    path = sidecar_path(artifact)
    return validate_sidecar(read_json(path), path)
