"""Issue 14, runs that repeat or follow one another: the same int8 command twice gives byte-identical
files (ONNX and TFLite); an interrupted re-run leaves the earlier artifact set whole; `benchmarks run`
and `gate` on what such runs leave. The calibration folder holds eight real photos and one PNG past
PIL's decompression-bomb limit, which must be skipped and named, not crash the run.
"""

from __future__ import annotations

import json
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest
from conftest import all_cores, assert_one_error, left_in
from test_interrupts import Running
from test_reliability import write_huge_png

from export.images import list_images

pytestmark = pytest.mark.slow

ONNX_INT8 = ["googlenet.int8.onnx", "googlenet.int8.onnx.json", "googlenet.onnx", "googlenet.onnx.json"]


@pytest.fixture(scope="module")
def calib_folder(imagenet_sample_dir: Path, tmp_path_factory) -> Path:
    """Links to eight shared photos (never copies) plus `huge.png` (20000 x 20000)."""
    folder = tmp_path_factory.mktemp("calib_with_bomb")
    for photo in list_images(imagenet_sample_dir).images[::60][:8]:
        (folder / photo.name).symlink_to(photo)
    write_huge_png(folder / "huge.png")
    return folder


def _twice(run_export_cli, args: list, root: Path) -> list:
    """The same command into two folders, side by side; each run must succeed. The two processes get
    different string-hash seeds (as any two runs do by default), so that nothing may depend on the
    order of a set or dict of names (ONNX Runtime's per-tensor results were)."""

    def one(name: str, seed: str):
        out = root / name
        return out, run_export_cli(*args, "--out", out, env={"PYTHONHASHSEED": seed}, timeout=900)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(one, ["a", "b"], ["1", "2"]))
    for _, result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    return runs


def _int8_args(fmt: str, weights: Path, calib: Path, size: int = 9) -> list:
    return [fmt, "--weights", weights, "--quantize", "int8", "--no-eval", "--calib", calib, "--calib-size", str(size)]


@pytest.fixture(scope="module")
def onnx_runs(run_export_cli, bvlc_weights: Path, calib_folder: Path, tmp_path_factory) -> list:
    with all_cores():  # as a user's runs: parallel calibration, two-threaded fit
        return _twice(run_export_cli, _int8_args("onnx", bvlc_weights, calib_folder), tmp_path_factory.mktemp("onnx"))


def assert_byte_identical(first: Path, second: Path, expected: list[str]) -> None:
    assert left_in(first) == expected and left_in(second) == expected, (left_in(first), left_in(second))
    differing = [name for name in expected if (first / name).read_bytes() != (second / name).read_bytes()]
    assert differing == [], f"differ between two identical runs: {differing}"


def test_onnx_int8_twice_gives_byte_identical_files(onnx_runs: list) -> None:
    (first, _), (second, _) = onnx_runs
    assert_byte_identical(first, second, ONNX_INT8)  # no `googlenet-inferred.onnx` either


def test_the_oversized_image_is_skipped_and_named_once(onnx_runs: list) -> None:
    (out, result), _ = onnx_runs
    warnings = [line for line in result.stderr.splitlines() if "huge.png" in line]
    assert len(warnings) == 1 and warnings[0].count("huge.png") == 1, warnings
    assert "image too large to decode safely" in warnings[0]
    calibration = json.loads((out / "googlenet.int8.onnx.json").read_text())["calibration"]
    assert calibration["images"] == 8 and calibration["unreadable"][0].startswith("huge.png: image too large")


def test_an_interrupted_rerun_leaves_the_earlier_set_whole(
    onnx_runs: list, bvlc_weights: Path, calib_folder: Path, tmp_path: Path
) -> None:
    """SIGINT in the per-layer report (the step that used to write into --out) of a run that would
    replace the set with a different int8 model (4 calibration photos, not 8)."""
    (earlier, _), _ = onnx_runs
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    shutil.copytree(earlier, out)
    tmp.mkdir()
    before = {name: (out / name).read_bytes() for name in left_in(out)}
    run = Running([*_int8_args("onnx", bvlc_weights, calib_folder, size=4), "--out", out], tmp)
    run.wait_for("measuring per-layer quantization error")
    run.proc.send_signal(signal.SIGINT)
    result = run.finish()
    assert_one_error(result, 130, "interrupted")
    assert {name: (out / name).read_bytes() for name in left_in(out)} == before
    assert left_in(tmp) == [], f"left in $TMPDIR: {left_in(tmp)}"


def test_gate_on_a_report_without_eval_fails_and_says_why(run_bench_cli, onnx_runs: list, tmp_path: Path) -> None:
    (out, _), _ = onnx_runs
    report = tmp_path / "report.json"
    done = run_bench_cli("run", out, "--runs", "2", "--warmup", "0", "--threads", "1", "--out", report)
    assert done.returncode == 0, done.stderr[-3000:]
    gate = run_bench_cli("gate", report)
    assert gate.returncode == 1 and "Traceback" not in gate.stderr, gate.stderr
    failing = [line for line in gate.stderr.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 2 and all("no top-1 drop or agreement figure" in line for line in failing), failing


def test_benchmarks_refuse_an_int8_model_whose_fp32_parent_changed(
    run_bench_cli, onnx_runs: list, tmp_path: Path
) -> None:
    """What an int8 run that failed after a new FP32 landed would leave, were the pair not published together."""
    (earlier, _), _ = onnx_runs
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    fp32 = onnx.load(str(out / "googlenet.onnx"))
    fp32.metadata_props.add(key="retrained", value="yes")
    onnx.save(fp32, str(out / "googlenet.onnx"))
    done = run_bench_cli("run", out, "--runs", "2", "--warmup", "0", "--threads", "1", "--out", tmp_path / "r.json")
    assert_one_error(done, 2, "googlenet.int8.onnx: was quantized from another googlenet.onnx", only_line=True)
    assert not (tmp_path / "r.json").exists()


def test_tflite_int8_twice_gives_byte_identical_files(
    run_export_cli, bvlc_weights: Path, calib_folder: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra: pip install -e '.[tflite]'")
    (first, _), (second, _) = _twice(run_export_cli, _int8_args("tflite", bvlc_weights, calib_folder), tmp_path)
    expected = ["googlenet.int8.tflite", "googlenet.int8.tflite.json", "googlenet.onnx", "googlenet.onnx.json"]
    expected += ["googlenet.tflite", "googlenet.tflite.json"]
    assert_byte_identical(first, second, sorted(expected))
