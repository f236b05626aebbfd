"""`export.pipeline.export_model`: the Python API does what `python -m export onnx --quantize int8` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_runtime.metrics import file_sha256
from export.artifacts import sidecar_path
from export.errors import ToolkitError
from export.pipeline import export_model
from quantize.calibration import FolderSource


@pytest.mark.slow
def test_onnx_int8_through_the_api_publishes_both_models_with_sidecars(
    bvlc_weights: Path, bvlc_loaded, imagenet_sample_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(imagenet_sample_dir.iterdir())[:24]:
        shutil.copyfile(path, photos / path.name)
    source = FolderSource(photos, bvlc_loaded.preprocess, size=16, seed=0)
    out = tmp_path / "out"

    outcome = export_model("onnx", weights=bvlc_weights, quantize="int8", calibration=source, out=out)

    fp32, int8 = out / "googlenet.onnx", out / "googlenet.int8.onnx"
    expected = {fp32, sidecar_path(fp32), int8, sidecar_path(int8)}
    assert set(out.iterdir()) == expected and set(outcome.files) == expected
    fp32_info = json.loads(sidecar_path(fp32).read_text())
    int8_info = json.loads(sidecar_path(int8).read_text())
    assert fp32_info["sha256"] == file_sha256(fp32) and int8_info["sha256"] == file_sha256(int8)
    assert int8_info["fp32_sha256"] == file_sha256(fp32)
    assert int8_info["calibration"]["images"] == 16 and int8_info["calibration"]["kind"] == "folder"
    # evaluated on the 8 photos calibration did not use, as the CLI does
    assert int8_info["drift"]["eval"]["images"] == 8
    assert fp32_info["evaluation"]["accuracy"]["images"] == 8


def test_unknown_format_and_mode_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="unknown export format"):
        export_model("coreml", out=tmp_path)
    with pytest.raises(ToolkitError, match="cannot be quantized"):
        export_model("onnx", quantize="fp16", out=tmp_path)
