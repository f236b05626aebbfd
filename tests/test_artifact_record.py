"""The sidecar record (issue 13): one typed `ArtifactRecord` builds every sidecar, its JSON Schema comes from the
record's fields, and a sidecar is validated when written and when read (a bad one is a one-line error)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from export.artifact_record import (
    REQUIRED,
    SIDECAR_SCHEMA,
    UNSET,
    ArtifactRecord,
    read_sidecar,
    validate_sidecar,
    write_sidecar,
)
from export.artifacts import sidecar_path
from export.errors import ToolkitError

PREPROCESS = {
    "color": "RGB", "scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "resize": 256, "resize_mode": "shorter", "crop": 224, "layout": "NCHW", "interpolation": "bilinear",
}  # fmt: skip


def tflite_record(path: Path) -> ArtifactRecord:
    """A complete fp32 TFLite record for a small stand-in file."""
    path.write_bytes(b"not really a flatbuffer")
    return ArtifactRecord(
        format="tflite", precision="fp32", io="float32", arch="reference", num_classes=2, weights="w.pt",
        weights_format="state_dict", weights_sha256=None, preprocess=PREPROCESS, labels={"names": ["a", "b"]},
        input={"name": "in", "shape": [1, 224, 224, 3], "dtype": "float32", "quantization": None},
        output={"name": "out", "shape": [1, 2], "dtype": "float32", "quantization": None},
        ops={"CONV_2D[FLOAT32]": 57}, converter="c", reference="googlenet.onnx", producer={"toolkit": "0.1.0"},
        validation={"passed": True, "max_abs_logit_diff": 1.2345678912e-05, "tolerance": 0.03, "images": 7},
    ).for_file(path)  # fmt: skip


def test_the_schema_is_generated_from_the_record() -> None:
    names = [f.name for f in fields(ArtifactRecord)]
    assert list(SIDECAR_SCHEMA["properties"]) == names
    assert all(SIDECAR_SCHEMA["properties"][n].get("description") for n in names)
    assert {key for required in REQUIRED.values() for key in required} <= set(names)


def test_to_dict_leaves_out_unset_keeps_null_and_rounds_all_but_preprocessing(tmp_path: Path) -> None:
    record = tflite_record(tmp_path / "m.tflite")
    data = record.to_dict()
    assert "drift" not in data and record.drift is UNSET  # left out: no evaluation
    assert data["weights_sha256"] is None  # written as null
    assert data["validation"]["max_abs_logit_diff"] == 1.234568e-05  # 7 significant digits
    assert data["preprocess"] == PREPROCESS  # exact
    assert data["artifact"] == "m.tflite" and data["size_bytes"] == len(b"not really a flatbuffer")


def test_written_sidecar_is_stable_json_and_reads_back(tmp_path: Path) -> None:
    model = tmp_path / "googlenet.tflite"
    record = tflite_record(model)
    assert write_sidecar(model, record) == sidecar_path(model)
    text = sidecar_path(model).read_text(encoding="utf-8")
    assert text == json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n"
    assert read_sidecar(model) == record.to_dict()


@pytest.mark.parametrize("missing", ["sha256", "preprocess", "validation"])
def test_a_sidecar_missing_a_required_field_is_one_line_naming_the_file(tmp_path: Path, missing: str) -> None:
    model = tmp_path / "googlenet.tflite"
    data = tflite_record(model).to_dict()
    del data[missing]
    sidecar_path(model).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ToolkitError) as caught:
        read_sidecar(model)
    message = str(caught.value)
    assert message.startswith(f"{sidecar_path(model)}: not an artifact sidecar")
    assert f"'{missing}' is a required property" in message and "\n" not in message


def test_writing_an_incomplete_record_is_refused_before_any_file(tmp_path: Path) -> None:
    model = tmp_path / "googlenet.int8.onnx"
    model.write_bytes(b"x")
    record = ArtifactRecord(format="onnx", precision="int8", quantization={}).for_file(model)
    with pytest.raises(ToolkitError, match=r"not an artifact sidecar: .*fp32_model"):
        write_sidecar(model, record)
    assert not sidecar_path(model).exists()


def test_a_wrongly_typed_field_is_refused(tmp_path: Path) -> None:
    data = tflite_record(tmp_path / "m.tflite").to_dict()
    with pytest.raises(ToolkitError, match="size_bytes"):
        validate_sidecar({**data, "size_bytes": "big"}, "m.tflite.json")


# -- sidecars of real exports ---------------------------------------------------------------------------------
@pytest.mark.slow  # full exports (bench_artifacts: FP32 + int8 ONNX, FP32 + int8 TFLite)
def test_every_sidecar_of_a_real_export_validates(bench_artifacts: dict) -> None:
    models = bench_artifacts["models"]
    kinds = set()
    for model in models:
        data = read_sidecar(model)  # validates
        assert data["artifact"] == model.name or model.name == "googlenet.onnx"  # the FP32 one is a copy
        kinds.add((data["format"], data["precision"]))
    assert {("onnx", "fp32"), ("onnx", "int8")} <= kinds


@pytest.mark.slow  # a full export (ten_class_dynamic_export: dynamic batch, no evaluation)
def test_a_sidecar_without_evaluation_validates(ten_class_dynamic_export: tuple) -> None:
    result, out_dir = ten_class_dynamic_export
    assert result.returncode == 0, result.stderr
    data = read_sidecar(out_dir / "googlenet.onnx")
    assert data["evaluation"] is None and data["input"]["shape"][0] == "batch"


def test_schema_command_prints_the_sidecar_schema(run_bench_cli) -> None:
    done = run_bench_cli("schema", "--sidecar")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == SIDECAR_SCHEMA
