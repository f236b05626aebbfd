"""`python -m benchmarks run / gate / compare`: real models in real runtimes, one benchmark run per session.

No timing is asserted: latency figures are checked for consistency (p50 <= p90 <= p99), never for speed.
"""

from __future__ import annotations

import copy
import json
import resource
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from benchmarks.report import REPORT_SCHEMA, validate_report
from edge_runtime import device_runner
from export.errors import ToolkitError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def bench_report(bench_artifacts: dict, imagenet_sample_dir: Path) -> dict:
    """One real run over every artifact: 40 labelled photos, threads 1 and 2, a few timed runs."""
    from benchmarks.run import RunOptions, run

    options = RunOptions(
        artifacts=[bench_artifacts["folder"]], eval_dir=imagenet_sample_dir, eval_size=40, runs=5, warmup=1
    )
    return run(options)


def by_name(report: dict) -> dict[str, dict]:
    return {a["name"]: a for a in report["artifacts"]}


def test_report_fits_its_schema_and_lists_every_artifact(bench_report: dict, bench_artifacts: dict) -> None:
    jsonschema.validate(bench_report, REPORT_SCHEMA)
    names = sorted(by_name(bench_report))
    assert names == sorted(p.name for p in bench_artifacts["models"])
    host = bench_report["host"]
    assert host["cores"] >= 1 and host["cpu"] and "onnxruntime" in host["runtimes"]
    assert bench_report["settings"]["eval_images"] == 40 and bench_report["settings"]["reference"] == "googlenet.onnx"


def test_schema_rejects_a_report_missing_fields(bench_report: dict) -> None:
    broken = copy.deepcopy(bench_report)
    del broken["artifacts"][0]["latency_ms"]
    with pytest.raises(ToolkitError, match="latency_ms"):
        validate_report(broken, "r.json")
    broken = copy.deepcopy(bench_report)
    broken["artifacts"][0]["format"] = "caffe"
    with pytest.raises(ToolkitError, match="format"):
        validate_report(broken)


def test_latency_percentiles_are_ordered_per_thread_count(bench_report: dict) -> None:
    for artifact in bench_report["artifacts"]:
        assert sorted(artifact["latency_ms"]) == ["1", "2"]
        for stats in artifact["latency_ms"].values():
            assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["p99"] <= stats["max"]
            assert stats["runs"] == 5 and stats["load_ms"] > 0 and stats["first_inference_ms"] > 0
        best = artifact["throughput"]
        assert best["images_per_s"] == pytest.approx(1000 / artifact["latency_ms"][str(best["threads"])]["median"])


def test_int8_models_use_less_memory_than_fp32(bench_report: dict) -> None:
    arts = by_name(bench_report)
    pairs = [("googlenet.onnx", "googlenet.int8.onnx")]
    if "googlenet.int8.tflite" in arts:
        pairs.append(("googlenet.tflite", "googlenet.int8.tflite"))
    for fp32, int8 in pairs:
        assert arts[int8]["peak_rss_mb"] < arts[fp32]["peak_rss_mb"], (fp32, int8)
        assert arts[int8]["size_bytes"] < 0.3 * arts[fp32]["size_bytes"]
    # Both peaks sit at the second LRN's band convolution (export/onnx_lrn.py), which int8 runs in float: equal
    assert arts["googlenet.int8.onnx"]["activation_bytes"] <= arts["googlenet.onnx"]["activation_bytes"]
    if "googlenet.int8.tflite" in arts:  # the peak sits at LRN, which int8 TFLite runs in float: equal
        assert arts["googlenet.int8.tflite"]["activation_bytes"] <= arts["googlenet.tflite"]["activation_bytes"]


def test_peak_rss_comes_from_a_fresh_process(bench_artifacts: dict, tmp_path: Path) -> None:
    """The measuring process holds the runtime and one model, not this test process's torch and images."""
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((1, 3, 224, 224), np.float32))
    fp32 = bench_artifacts["folder"] / "googlenet.onnx"
    measured = device_runner.measure_in_subprocess(fp32, sample, [1], runs=2, warmup=0)
    own_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert fp32.stat().st_size / 2**20 < measured["peak_rss_mb"] < own_peak_mb
    assert measured["baseline_rss_mb"] < measured["peak_rss_mb"]


def test_mac_totals_agree_across_pytorch_onnx_and_tflite(bench_report: dict, bvlc_loaded) -> None:
    from export.counting import count_torch

    torch_macs = count_torch(bvlc_loaded.model).macs
    for artifact in bench_report["artifacts"]:
        assert abs(artifact["macs"] - torch_macs) <= 0.01 * torch_macs, artifact["name"]
        assert artifact["params"] == pytest.approx(6_998_552, rel=0.01)


def test_accuracy_against_the_reference(bench_report: dict) -> None:
    arts = by_name(bench_report)
    reference = arts["googlenet.onnx"]["accuracy"]
    assert reference["vs_reference"]["top1_agreement"] == 1.0 and reference["vs_reference"]["top1_drop_pp"] == 0
    assert reference["images"] == 40 and 0.6 < reference["top1"] <= 1
    int8 = arts["googlenet.int8.onnx"]["accuracy"]
    assert int8["emulated"]["vs_reference"]["top1_agreement"] >= 0.9  # target-independent figures
    broken = arts["googlenet-black.int8.onnx"]["accuracy"]
    assert broken["emulated"]["vs_reference"]["top1_agreement"] < 0.5


# -- gate ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reports(bench_report: dict, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reports")
    with_broken = folder / "with_broken.json"
    with_broken.write_text(json.dumps(bench_report))
    real = copy.deepcopy(bench_report)
    real["artifacts"] = [a for a in real["artifacts"] if "black" not in a["name"]]
    real_path = folder / "real.json"
    real_path.write_text(json.dumps(real))
    return {"with_broken": with_broken, "real": real_path, "folder": folder}


def test_gate_fails_the_broken_int8_model_and_writes_junit(run_bench_cli, reports: dict) -> None:
    junit = reports["folder"] / "gate.xml"
    done = run_bench_cli(
        "gate", reports["with_broken"], "--max-top1-drop", "5", "--min-agreement", "0.9", "--junit", junit
    )
    assert done.returncode == 1, done.stderr
    failing = [line for line in done.stderr.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and "googlenet-black.int8.onnx" in failing[0] and "agreement" in failing[0]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["googlenet-black.int8.onnx"]


def test_gate_passes_the_real_models(run_bench_cli, reports: dict) -> None:
    junit = reports["folder"] / "pass.xml"
    done = run_bench_cli("gate", reports["real"], "--max-top1-drop", "5", "--min-agreement", "0.9", "--junit", junit)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "0"


def test_gate_defaults_come_from_pyproject(run_bench_cli, reports: dict, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.googlenet-edge.gate]\nmax_size_mb = 10\n")
    done = run_bench_cli("gate", reports["real"], "--max-top1-drop", "5", "--min-agreement", "0.9", cwd=tmp_path)
    assert done.returncode == 1
    assert all("size" in line for line in done.stderr.splitlines() if line.startswith("FAIL"))
    assert "googlenet.onnx" in done.stderr and "googlenet.int8.onnx" not in done.stderr


def test_gate_latency_ratio_is_judged_against_the_reference(run_bench_cli, bench_report: dict, tmp_path: Path) -> None:
    """Ratios to the reference measured in the same run (here made 10x slower on purpose)."""
    slowed = copy.deepcopy(bench_report)
    slowed["artifacts"] = [a for a in slowed["artifacts"] if "black" not in a["name"]]
    reference = by_name(bench_report)["googlenet.onnx"]["latency_ms"]
    for artifact in slowed["artifacts"]:  # measured times vary run to run: only the factor set here is judged
        for threads, stats in artifact["latency_ms"].items():
            factor = 10 if artifact["name"] == "googlenet.int8.onnx" else 1
            stats["median"] = factor * reference[threads]["median"]
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(slowed))
    done = run_bench_cli("gate", path, "--max-top1-drop", "50", "--min-agreement", "0", "--max-latency-ratio", "1.5")
    assert done.returncode == 1
    failing = [line for line in done.stderr.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and "googlenet.int8.onnx" in failing[0] and "latency" in failing[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "report not found"),
        (["--min-agreement", "5"], "--min-agreement"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_gate_usage_errors_exit_2(run_bench_cli, reports: dict, tmp_path: Path, args: list[str], message: str) -> None:
    argv = args if args[0].endswith(".json") else [reports["real"], *args]
    done = run_bench_cli("gate", *argv, cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


def test_gate_refuses_a_file_that_is_not_a_report(run_bench_cli, tmp_path: Path) -> None:
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"schema_version": 1, "host": {"cpu": "x", "cores": 1, "isa": []}, "artifacts": [{}]}))
    done = run_bench_cli("gate", bad)
    assert done.returncode == 2 and "not a benchmark report" in done.stderr and "Traceback" not in done.stderr


# -- compare ------------------------------------------------------------------------------------------------
def test_compare_reports_what_got_worse(run_bench_cli, reports: dict, bench_report: dict, tmp_path: Path) -> None:
    from benchmarks.compare import compare

    slower = copy.deepcopy(bench_report)
    for artifact in slower["artifacts"]:
        for stats in artifact["latency_ms"].values():
            stats["median"] *= 2
    changes = compare(bench_report, slower)
    latency = [c for c in changes if c.metric.startswith("ms p50")]
    assert latency and all(c.verdict == "worse" for c in latency)
    assert all(c.verdict == "same" for c in changes if not c.metric.startswith("ms p50"))
    new = tmp_path / "new.json"
    new.write_text(json.dumps(slower))
    done = run_bench_cli("compare", reports["real"], new, "--json", tmp_path / "diff.json")
    assert done.returncode == 0, done.stderr
    assert "worse" in done.stdout
    diff = json.loads((tmp_path / "diff.json").read_text())
    assert any(c["verdict"] == "added" and "black" in c["artifact"] for c in diff["changes"])  # only in the new one
    assert {c["verdict"] for c in diff["changes"]} >= {"worse", "same"}


# -- the command line ---------------------------------------------------------------------------------------
def test_run_cli_prints_the_table_and_writes_report_and_plot(
    run_bench_cli, bench_artifacts: dict, imagenet_sample_dir, tmp_path
):
    out = tmp_path / "report.json"
    fp32 = bench_artifacts["folder"] / "googlenet.onnx"
    int8 = bench_artifacts["folder"] / "googlenet.int8.onnx"
    done = run_bench_cli(
        "run", fp32, int8, "--eval", imagenet_sample_dir, "--eval-size", "8", "--threads", "1",
        "--runs", "3", "--warmup", "0", "--out", out, "--plot",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "googlenet.int8.onnx" in done.stdout and "ms p50 @1" in done.stdout
    report = json.loads(out.read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    assert [a["name"] for a in report["artifacts"]] == ["googlenet.onnx", "googlenet.int8.onnx"]
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere.onnx"], "no such file or folder"),
        (["--threads", "0"], "--threads"),
        (["--eval", "no-such-dir"], "evaluation folder not found"),
    ],
)
def test_run_usage_errors_exit_2(run_bench_cli, args: list[str], message: str, tmp_path: Path) -> None:
    done = run_bench_cli("run", *args, "--out", tmp_path / "r.json", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr
    assert not (tmp_path / "r.json").exists()
