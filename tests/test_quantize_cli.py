"""`python -m export onnx --quantize int8`: the acceptance command, offline calibration, and bad input.

The full acceptance command (BVLC weights, 100 calibration photos, drift on the other 400) runs once for
this module and several tests read what it wrote. Bad input must end as either the documented handling or
one `error: ...` line and exit 2 — never a traceback, a partial `googlenet.int8.onnx` or hidden temp files
in `--out`; inputs that can be checked before the (slow) export must be rejected before it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import write_png16_rgb
from PIL import Image

from edge_runtime.hostinfo import int8_host_caveat
from export import paths
from export.images import load_image
from export.preprocess import BVLC_PREPROCESS
from quantize import FolderSource
from quantize.presets import RECIPES as ONNX_RECIPES
from quantize.presets import host_target

PROJECT_ROOT = paths.PROJECT_ROOT
ALL_FILES = ["googlenet.int8.onnx", "googlenet.int8.onnx.json", "googlenet.onnx", "googlenet.onnx.json"]
FIDELITY_KEYS = {"top1_agreement", "top5_overlap", "kl_mean", "cosine_mean"}
EXPORT_STARTED = "exporting to ONNX"

# Acceptance thresholds for the emulated (target-independent) int8 model on the 400 held-out photos: a guard
# against regressions of the default recipe, one photo (0.25 pp) under the lowest figure measured. The same
# command measures 98.2% on the AVX-512 Xeon and 97.75% on the AVX2 EPYC, most likely because the calibration
# ranges come from the host's float kernels (their summation order): a near-tie photo or two moves per CPU.
MAX_EMULATED_TOP1_DROP_PP = 0.5
MIN_EMULATED_AGREEMENT = 0.975
# The default recipe's logit error: KL 0.0011 measured (AVX2 EPYC); the recipe before its float stem, float
# classifier input and shared Concat grids measured 0.0045, which this bound refuses.
MAX_EMULATED_KL = 0.002
MAX_SIZE_RATIO = 0.26


@dataclass
class CliRun:
    result: subprocess.CompletedProcess
    out: Path

    def explain(self) -> str:
        return f"exit {self.result.returncode}\n--- stderr (tail) ---\n{self.result.stderr[-3000:]}"

    def sidecar(self, name: str = "googlenet.int8.onnx.json") -> dict:
        text = (self.out / name).read_text(encoding="utf-8")
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{name} is not strict JSON ({c})"))

    def metadata(self, name: str = "googlenet.int8.onnx") -> dict[str, str]:
        model = onnx.load(str(self.out / name), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}


def relative_to_project(path: Path) -> str:
    """The command line as a person types it from the project root (`../shared/...`)."""
    return os.path.relpath(path, PROJECT_ROOT)


def env_without_weights(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != paths.WEIGHTS_ENV}
    env.update(extra)
    return env


# Any attempt to reach the network fails fast: "works offline" is then really tested.
OFFLINE = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HF_HUB_OFFLINE": "1",
}


def files_in(folder: Path) -> list[str]:
    """Every entry of `folder`, hidden ones included (a staging file would show up here)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(run: CliRun, *fragments: str) -> None:
    stderr = run.result.stderr
    assert run.result.returncode == 2, run.explain()
    assert "Traceback" not in stderr, run.explain()
    errors = error_lines(stderr)
    assert len(errors) == 1, run.explain()
    assert stderr.rstrip("\n").splitlines()[-1] == errors[0], "the error is not the last line"
    for fragment in fragments:
        assert fragment in errors[0], run.explain()


# -- real photos on disk --------------------------------------------------------------------------------
def write_crops(folder: Path, photos: list[Path], count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        photo = load_image(photos[index % len(photos)])
        side = min(photo.size) // 2
        shift = 29 * (index // len(photos))
        path = folder / f"photo{index:02d}.jpg"
        photo.crop((shift, shift, shift + side, shift + side)).resize((128, 128)).save(path, quality=90)
        written.append(path)
    return written


# -- the acceptance command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def acceptance(run_export_cli, bvlc_weights: Path, imagenet_sample_dir: Path, tmp_path_factory) -> CliRun:
    """`python -m export onnx --weights ../shared/weights/bvlc_googlenet.onnx --quantize int8
    --calib ../shared/data/imagenet-sample --calib-size 100` (into a temporary --out)."""
    out = tmp_path_factory.mktemp("acceptance") / "out"
    result = run_export_cli(
        "onnx",
        "--weights",
        relative_to_project(bvlc_weights),
        "--quantize",
        "int8",
        "--calib",
        relative_to_project(imagenet_sample_dir),
        "--calib-size",
        "100",
        "--out",
        out,
        timeout=2400,
    )
    return CliRun(result, out)


@pytest.fixture(scope="module")
def accepted(acceptance: CliRun) -> CliRun:
    """The acceptance run, which must have succeeded for the tests that read its outputs."""
    assert acceptance.result.returncode == 0, acceptance.explain()
    return acceptance


@pytest.mark.slow
def test_acceptance_command_writes_fp32_and_int8_and_nothing_else(acceptance: CliRun) -> None:
    assert acceptance.result.returncode == 0, acceptance.explain()
    assert "Traceback" not in acceptance.result.stderr
    assert files_in(acceptance.out) == ALL_FILES


@pytest.mark.slow
def test_acceptance_int8_is_at_most_26_percent_of_fp32(accepted: CliRun) -> None:
    int8, fp32 = accepted.out / "googlenet.int8.onnx", accepted.out / "googlenet.onnx"
    ratio = int8.stat().st_size / fp32.stat().st_size
    assert ratio <= MAX_SIZE_RATIO, f"int8 is {ratio:.2%} of FP32"
    assert accepted.sidecar()["size_ratio"] == pytest.approx(ratio, abs=1e-4)


@pytest.mark.slow
def test_acceptance_drift_is_measured_on_the_400_other_photos(accepted: CliRun) -> None:
    int8, fp32 = accepted.sidecar(), accepted.sidecar("googlenet.onnx.json")
    assert int8["calibration"]["images"] == 100 and int8["calibration"]["requested"] == 100
    assert int8["calibration"]["unreadable"] == [] and int8["calibration"]["notes"] == []
    drift = int8["drift"]
    assert drift["eval"]["images"] == 400 and drift["eval"]["labelled"] == 400
    # The FP32 export was evaluated on the same 400: the calibration photos were left out of both.
    evaluation = fp32["evaluation"]
    assert evaluation["images"] == 400 and evaluation["excluded"] == 100
    assert drift["fp32"]["accuracy"] == evaluation["accuracy"]


@pytest.mark.slow
def test_acceptance_drift_report_fields(accepted: CliRun) -> None:
    drift = accepted.sidecar()["drift"]
    assert set(drift["fp32"]["accuracy"]) >= {"top1", "top5"}
    # the default arm64 model runs on this host's kernels only where they are ARM's
    on_host = host_target() == "arm64"
    runs = ("host", "emulated") if on_host else ("emulated",)
    for run in runs:
        assert set(drift[run]["accuracy"]) >= {"top1", "top5"}, run
        assert set(drift[run]["fidelity"]) >= FIDELITY_KEYS, run
        expected_drop = 100 * (drift["fp32"]["accuracy"]["top1"] - drift[run]["accuracy"]["top1"])
        assert drift[run]["top1_drop_pp"] == pytest.approx(expected_drop, abs=1e-4), run
    assert drift["host_caveat"] == (int8_host_caveat() if on_host else None)
    assert (drift["host"] is None) == (not on_host) and (drift["host_skipped"] is None) == on_host
    if not on_host:
        assert "int8 on this host: not run (made for arm64" in accepted.result.stdout
    rows = drift["layers"]["worst_first"]
    values = [row["sqnr_db"] for row in rows]
    assert len(rows) > 50 and values == sorted(values)
    assert all(set(row) >= {"node", "sqnr_db"} for row in rows)


@pytest.mark.slow
def test_acceptance_emulated_int8_is_within_half_a_point_of_fp32(accepted: CliRun) -> None:
    drift = accepted.sidecar()["drift"]
    emulated = drift["emulated"]
    numbers = (
        f"FP32 top-1 {drift['fp32']['accuracy']['top1']:.4f}; "
        f"emulated top-1 {emulated['accuracy']['top1']:.4f} (drop {emulated['top1_drop_pp']:+.2f} pp, "
        f"agreement {emulated['fidelity']['top1_agreement']:.4f}, KL {emulated['fidelity']['kl_mean']:.5f})"
    )
    assert emulated["top1_drop_pp"] <= MAX_EMULATED_TOP1_DROP_PP, numbers
    assert emulated["fidelity"]["top1_agreement"] >= MIN_EMULATED_AGREEMENT, numbers
    assert emulated["fidelity"]["kl_mean"] <= MAX_EMULATED_KL, numbers


@pytest.mark.slow
def test_acceptance_int8_metadata(accepted: CliRun, imagenet_sample_dir: Path) -> None:
    meta, fp32_meta = accepted.metadata(), accepted.metadata("googlenet.onnx")
    assert meta["precision"] == "int8"
    assert meta["preprocess"] == fp32_meta["preprocess"]
    assert meta["labels"] == fp32_meta["labels"]
    quantization = json.loads(meta["quantization"])
    assert quantization["target"] == "arm64" and quantization["calibration"] == "minmax"
    # the default recipe (`learned`), as its passes and what they left float: the stem's activations (the image,
    # conv1's output, pool1's), the average pool and the classifier's input; every layer's weights int8 (conv1's
    # too), rounded by GPTQ on a sample of positions
    assert quantization["recipe"] == "learned" and quantization["passes"] == list(ONNX_RECIPES["learned"])
    assert quantization["float_ops"]["activations"] == ["input", "conv1.relu", "pool1", "view"]
    assert quantization["exclude"] == ["avgpool"]
    rounding = quantization["rounding"]
    assert rounding["method"] == "gptq" and rounding["kept_float"] == [] and len(rounding["layers"]) == 58
    assert rounding["positions_per_input"] == 64 and rounding["output_error_vs_nearest"] < 0.7
    model = onnx.load(str(accepted.out / "googlenet.int8.onnx"))
    int8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    conv1 = next(node for node in model.graph.node if node.name == "conv1.conv")
    weight = next(node for node in model.graph.node if node.output[0] == conv1.input[1])
    assert weight.op_type == "DequantizeLinear" and weight.input[0] in int8
    assert conv1.input[0] == "input"  # the float image, no QuantizeLinear in between
    calibration = json.loads(meta["calibration"])
    assert calibration["images"] == 100
    expected = FolderSource(imagenet_sample_dir, BVLC_PREPROCESS, size=100, seed=0).describe()
    assert calibration["file_list_sha256"] == expected["file_list_sha256"]
    summary = json.loads(meta["drift"])
    runs = {"host", "emulated"} if host_target() == "arm64" else {"emulated"}
    assert summary["images"] == 400 and set(summary) == {"images", *runs}


@pytest.mark.slow
def test_acceptance_sidecar_has_the_metadata_plus_size_drift_and_host(accepted: CliRun) -> None:
    sidecar, meta = accepted.sidecar(), accepted.metadata()
    assert sidecar["precision"] == "int8"
    assert sidecar["preprocess"] == json.loads(meta["preprocess"])
    assert sidecar["labels"] == json.loads(meta["labels"])
    assert sidecar["quantization"] == json.loads(meta["quantization"])
    assert {k: v for k, v in sidecar["calibration"].items() if k != "unreadable"} == json.loads(meta["calibration"])
    assert {"size_ratio", "drift", "host"} <= set(sidecar)
    assert sidecar["host"]["machine"] and sidecar["host"]["cores"] >= 1
    assert sidecar["fp32_model"] == "googlenet.onnx"


@pytest.mark.slow
def test_acceptance_prints_the_drift_and_layer_tables(accepted: CliRun) -> None:
    stdout = accepted.result.stdout
    assert "int8 drift vs FP32 (400 images)" in stdout
    assert "int8 emulated (target-independent)" in stdout
    assert "worst-quantized activations" in stdout
    worst = accepted.sidecar()["drift"]["layers"]["worst_first"][0]["node"]
    assert worst in stdout


# -- no --calib: the built-in photographs, offline --------------------------------------------------------
@pytest.fixture(scope="module")
def builtin_run(run_export_cli, bvlc_weights: Path, tmp_path_factory) -> CliRun:
    out = tmp_path_factory.mktemp("builtin") / "out"
    result = run_export_cli(
        "onnx",
        "--weights",
        relative_to_project(bvlc_weights),
        "--quantize",
        "int8",
        "--calib-size",
        "8",
        "--no-eval",
        "--out",
        out,
        env=env_without_weights(**OFFLINE),
        timeout=1200,
    )
    return CliRun(result, out)


@pytest.mark.slow
def test_no_calib_uses_the_builtin_photos_offline_with_a_warning(builtin_run: CliRun) -> None:
    assert builtin_run.result.returncode == 0, builtin_run.explain()
    assert files_in(builtin_run.out) == ALL_FILES
    warnings = [line for line in builtin_run.result.stderr.splitlines() if line.startswith("warning:")]
    assert any("no --calib" in line and "built-in" in line for line in warnings), builtin_run.explain()
    calibration = builtin_run.sidecar()["calibration"]
    assert calibration["kind"] == "builtin-photos" and calibration["images"] == 8
    assert calibration["notes"]  # says that a set from your own data is better
    assert json.loads(builtin_run.metadata()["calibration"])["kind"] == "builtin-photos"


@pytest.mark.slow
def test_no_calib_drift_falls_back_to_agreement_on_real_photos(builtin_run: CliRun) -> None:
    assert builtin_run.result.returncode == 0, builtin_run.explain()
    drift = builtin_run.sidecar()["drift"]
    assert drift["eval"]["images"] >= 5 and drift["eval"]["labelled"] == 0
    assert drift["fp32"]["accuracy"] is None
    assert set(drift["emulated"]["fidelity"]) >= FIDELITY_KEYS
    assert drift["emulated"]["fidelity"]["cosine_mean"] > 0.9  # real BVLC weights, real photos


# -- a messy calibration folder: handled, and reported ----------------------------------------------------
@pytest.fixture(scope="module")
def messy_folder(shared_photos: list[Path], tmp_path_factory) -> Path:
    """6 real photo crops, grey, CMYK and 16-bit copies, a truncated and a garbage JPEG sorted into the
    middle, and a text file."""
    folder = tmp_path_factory.mktemp("messy") / "calib"
    write_crops(folder, shared_photos, 6)
    photo = load_image(shared_photos[0])
    photo.convert("L").save(folder / "g_gray.jpg", quality=90)
    photo.convert("CMYK").save(folder / "k_cmyk.jpg", quality=90)
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(folder / "p_gray16.png")
    write_png16_rgb(folder / "r_rgb16.png", np.asarray(photo, dtype=np.uint16) * 257)
    photo.save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "full.jpg").unlink()
    (folder / "m_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "n_garbage.jpg").write_bytes(b"this is no JPEG\n" * 32)
    (folder / "notes.txt").write_text("calibration photos\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def messy_run(run_export_cli, messy_folder: Path, tmp_path_factory) -> CliRun:
    """Random-init weights (accuracy is not the point), --calib-size larger than the folder."""
    out = tmp_path_factory.mktemp("messy_run") / "out"
    result = run_export_cli(
        "onnx", "--quantize", "int8", "--calib", messy_folder, "--calib-size", "50", "--out", out, timeout=1200
    )
    return CliRun(result, out)


@pytest.mark.slow
def test_messy_folder_is_handled_and_reported(messy_run: CliRun) -> None:
    assert messy_run.result.returncode == 0, messy_run.explain()
    assert "Traceback" not in messy_run.result.stderr
    assert files_in(messy_run.out) == ALL_FILES
    calibration = messy_run.sidecar()["calibration"]
    # 12 image files: 6 crops + grey + CMYK + 16-bit grey + 16-bit RGB readable, 2 not.
    assert calibration["requested"] == 50 and calibration["images"] == 10
    assert calibration["skipped_non_images"] == 1


@pytest.mark.slow
def test_messy_folder_calib_size_larger_than_the_folder_is_noted(messy_run: CliRun) -> None:
    assert messy_run.result.returncode == 0, messy_run.explain()
    notes = messy_run.sidecar()["calibration"]["notes"]
    assert len(notes) == 1 and "--calib-size 50" in notes[0] and "using all" in notes[0]
    assert any("--calib-size 50" in line for line in messy_run.result.stderr.splitlines())


@pytest.mark.slow
def test_messy_folder_unreadable_images_are_named(messy_run: CliRun) -> None:
    assert messy_run.result.returncode == 0, messy_run.explain()
    unreadable = messy_run.sidecar()["calibration"]["unreadable"]
    assert [entry.split(":")[0] for entry in unreadable] == ["m_truncated.jpg", "n_garbage.jpg"]
    stderr = messy_run.result.stderr
    assert "m_truncated.jpg" in stderr and "n_garbage.jpg" in stderr
    # Unreadable photos are reported in the sidecar, not baked into the model's metadata.
    assert "unreadable" not in json.loads(messy_run.metadata()["calibration"])


# -- bad input that must be rejected before the export starts ---------------------------------------------
def _setup_bad_input(kind: str, root: Path, photos: list[Path]) -> list[str]:
    """The extra arguments for one kind of bad input (files made under `root`)."""
    if kind == "calib-size-0":
        write_crops(root / "photos", photos, 3)
        return ["--calib", str(root / "photos"), "--calib-size", "0"]
    if kind == "calib-size-negative-no-calib":
        return ["--calib-size", "-5"]
    if kind == "empty-folder":
        (root / "empty").mkdir()
        return ["--calib", str(root / "empty")]
    if kind == "only-text-files":
        (root / "texts").mkdir()
        for name in ("a.txt", "b.txt"):
            (root / "texts" / name).write_text("no photo\n", encoding="utf-8")
        return ["--calib", str(root / "texts")]
    if kind == "missing-folder":
        return ["--calib", str(root / "nowhere")]
    if kind == "single-image-file":
        write_crops(root, photos, 1)
        return ["--calib", str(root / "photo00.jpg")]
    if kind == "npy-wrong-shape":
        np.save(root / "calib.npy", np.zeros((2, 3, 100, 100), np.float32))
        return ["--calib", str(root / "calib.npy")]
    if kind == "npz-mixed-shapes":
        np.savez(root / "calib.npz", a=np.zeros((2, 3, 224, 224), np.float32), b=np.zeros((1, 3, 99, 99), np.float32))
        return ["--calib", str(root / "calib.npz")]
    if kind == "unknown-target":
        return ["--target", "riscv"]
    if kind == "palette-with-a-budget":
        return ["--int8-recipe", "learned-palette", "--max-drop", "0.3"]
    if kind == "tflite-only-recipe":
        return ["--int8-recipe", "learned-mixed"]
    raise AssertionError(kind)


BAD_INPUT = {
    "calib-size-0": ("--calib-size must be at least 1 (got 0)",),
    "calib-size-negative-no-calib": ("--calib-size must be at least 1 (got -5)",),
    "empty-folder": ("empty", "no images"),
    "only-text-files": ("texts", "no images", "2 other files"),
    "missing-folder": ("nowhere", "not found"),
    "single-image-file": ("photo00.jpg", "must be a folder of images or a .npy/.npz file"),
    "npy-wrong-shape": ("calib.npy", "(3, 100, 100)", "(3, 224, 224)"),
    "npz-mixed-shapes": ("calib.npz",),
    "unknown-target": ("--target", "riscv"),
    "palette-with-a-budget": ("--max-drop/--min-agreement", "learned-palette's all are already"),
    "tflite-only-recipe": ("learned-mixed is tflite-only", "onnx offers"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_bad_calibration_input_fails_before_the_export(
    kind: str, run_export_cli, shared_photos: list[Path], tmp_path: Path
) -> None:
    args = _setup_bad_input(kind, tmp_path, shared_photos)
    out = tmp_path / "out"
    run = CliRun(run_export_cli("onnx", "--quantize", "int8", *args, "--out", out, timeout=300), out)
    assert_one_line_error(run, *BAD_INPUT[kind])
    assert EXPORT_STARTED not in run.result.stderr, "the input was only rejected after the slow export"
    assert files_in(out) == []


# -- an unknown --exclude node ----------------------------------------------------------------------------
@pytest.mark.slow
def test_unknown_exclude_node_is_a_one_line_error_and_no_int8_model(
    run_export_cli, shared_photos: list[Path], tmp_path: Path
) -> None:
    write_crops(tmp_path / "photos", shared_photos, 3)
    out = tmp_path / "out"
    result = run_export_cli(
        "onnx",
        "--no-eval",
        "--quantize",
        "int8",
        "--calib",
        tmp_path / "photos",
        "--calib-size",
        "2",
        "--exclude",
        "fc",
        "no_such_node",
        "--out",
        out,
        timeout=1200,
    )
    run = CliRun(result, out)
    assert_one_line_error(run, "--exclude", "no_such_node")
    assert "googlenet.int8.onnx" not in files_in(out)
    assert all(not name.startswith(".") for name in files_in(out)), files_in(out)
