"""`python -m benchmarks bundle` / `merge`: the device runner in a fresh venv with only numpy and the runtimes.

The venv stands in for a Raspberry Pi: it has no PyTorch, no TensorFlow, no Pillow and not this repository;
the bundle's `run.py` must produce the same accuracy figures as the host benchmark on the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest

from benchmarks.bundle import ANDROID_BESIDE_RUN, SHIPPED_BESIDE_RUN
from benchmarks.report import REPORT_SCHEMA

pytestmark = pytest.mark.slow

EVAL_SIZE = 12
DEVICE = "bundle-venv"


def bare_env() -> dict[str, str]:
    """No PYTHONPATH, no virtualenv of ours: what a device's shell would have."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


@pytest.fixture(scope="session")
def device_venv(tmp_path_factory) -> Path:
    """A fresh venv with only numpy, ai-edge-litert and onnxruntime (the versions this project pins)."""
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pins = [f"numpy=={metadata.version('numpy')}"]
    pins += [f"{name}=={metadata.version(name)}" for name in ("onnxruntime", "ai-edge-litert")]
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"cannot build the device venv: {done.stderr[-1500:]}")
    return python


@pytest.fixture(scope="session")
def bundle(run_bench_cli, bench_artifacts: dict, imagenet_sample_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "googlenet-bench.tar.gz"
    models = [p for p in bench_artifacts["models"] if "black" not in p.name]
    done = run_bench_cli("bundle", *models, "--eval", imagenet_sample_dir, "--eval-size", EVAL_SIZE, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def unpack(bundle: Path, where: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(where, filter="data")
    return where / "googlenet-bench"


@pytest.fixture(scope="session")
def device_results(bundle: Path, device_venv: Path, tmp_path_factory) -> Path:
    root = unpack(bundle, tmp_path_factory.mktemp("unpacked"))
    out = root.parent / "results-device.json"
    command = [str(device_venv), "-I", "run.py", "--threads", "1", "--runs", "3", "--warmup", "0"]
    done = subprocess.run(
        [*command, "--device", DEVICE, "--out", str(out)], cwd=root, env=bare_env(),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "googlenet.int8.onnx" in done.stdout and "peak MB" in done.stdout
    return out


@pytest.fixture(scope="session")
def host_report(bench_artifacts: dict, imagenet_sample_dir: Path, tmp_path_factory) -> Path:
    from benchmarks.run import RunOptions, run

    models = [p for p in bench_artifacts["models"] if "black" not in p.name]
    options = RunOptions(artifacts=models, eval_dir=imagenet_sample_dir, eval_size=EVAL_SIZE, threads=[1], runs=3)
    path = tmp_path_factory.mktemp("host") / "report.json"
    path.write_text(json.dumps(run(options)))
    return path


def test_bundle_holds_models_inputs_runner_and_manifest(bundle: Path, tmp_path: Path) -> None:
    root = unpack(bundle, tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    names = {m["name"] for m in manifest["models"]}
    assert {"googlenet.onnx", "googlenet.int8.onnx"} <= names
    for model in manifest["models"]:
        assert (root / model["file"]).is_file() and (root / model["inputs"]).is_file()
        assert model["macs"] > 1.5e9 and model["activation_bytes"] > 0
    assert set(manifest["files"]) >= {"run.py", "README.md", "labels.npy", "reference_outputs.npy"}
    assert {"android/run_android.py", *(f"android/{name}" for name in ANDROID_BESIDE_RUN)} <= set(manifest["files"])
    assert {"ceiling.py", "ceiling/ceiling.onnx", "ceiling/ceiling.int8.tflite"} <= set(manifest["files"])
    readme = (root / "README.md").read_text()
    assert "tar xf googlenet-bench.tar.gz" in readme and "python3 googlenet-bench/run.py" in readme
    for standalone in ("run.py", *SHIPPED_BESIDE_RUN):
        text = (root / standalone).read_text()
        assert "from export" not in text and "import torch" not in text and "from benchmarks" not in text


def test_bundle_is_reproducible(
    run_bench_cli, bundle: Path, bench_artifacts: dict, imagenet_sample_dir: Path, tmp_path: Path
):
    again = tmp_path / bundle.name  # same name: the README inside quotes it
    models = [p for p in bench_artifacts["models"] if "black" not in p.name]
    done = run_bench_cli("bundle", *models, "--eval", imagenet_sample_dir, "--eval-size", EVAL_SIZE, "--out", again)
    assert done.returncode == 0, done.stderr[-2000:]
    assert again.read_bytes() == bundle.read_bytes()


def test_device_venv_has_neither_torch_nor_this_repository(device_venv: Path) -> None:
    for module in ("torch", "tensorflow", "PIL", "export", "benchmarks"):
        probe = subprocess.run(
            [str(device_venv), "-I", "-c", f"import {module}"], env=bare_env(), cwd="/", capture_output=True
        )
        assert probe.returncode != 0, module


def test_device_results_equal_the_host_benchmark(device_results: Path, host_report: Path) -> None:
    device = json.loads(device_results.read_text())
    host = json.loads(host_report.read_text())
    jsonschema.validate(device, REPORT_SCHEMA)
    assert {a["device"] for a in device["artifacts"]} == {DEVICE}
    host_by_name = {a["name"]: a for a in host["artifacts"]}
    assert sorted(host_by_name) == sorted(a["name"] for a in device["artifacts"])
    for artifact in device["artifacts"]:
        expected = host_by_name[artifact["name"]]
        assert artifact["accuracy"] == expected["accuracy"], artifact["name"]
        assert artifact["macs"] == expected["macs"] and artifact["size_bytes"] == expected["size_bytes"]
        stats = artifact["latency_ms"]["1"]
        assert stats["median"] <= stats["p90"] <= stats["p99"]
        assert artifact["peak_rss_mb"] > 0
        assert artifact["kernels"] == expected["kernels"], artifact["name"]  # same CPU, same kernels
    assert device["host"]["cores"] >= 1 and "onnxruntime" in device["host"]["runtimes"]
    # the device measured its own ceiling, through the same runtimes, and every timed model's share of it
    for report in (device, host):
        ceiling = report["ceiling"]["gmacs"]
        formats = {artifact["format"] for artifact in report["artifacts"]}
        assert set(ceiling) == {{"onnx": "onnxruntime", "tflite": "litert"}[f] for f in formats}
        assert all(ceiling[runtime]["int8"]["1"] > ceiling[runtime]["fp32"]["1"] / 4 > 0 for runtime in ceiling)
        for artifact in report["artifacts"]:
            achieved = artifact["macs"] / (artifact["latency_ms"]["1"]["median"] / 1000) / 1e9
            assert artifact["ceiling"]["1"]["gmacs"] == pytest.approx(achieved, rel=0.01)
            assert artifact["ceiling"]["1"]["share"] > 0


def test_merge_puts_host_and_device_side_by_side(
    run_bench_cli, device_results: Path, host_report: Path, tmp_path: Path
) -> None:
    merged_path = tmp_path / "merged.json"
    done = run_bench_cli("merge", host_report, device_results, "--out", merged_path)
    assert done.returncode == 0, done.stderr[-2000:]
    merged = json.loads(merged_path.read_text())
    jsonschema.validate(merged, REPORT_SCHEMA)
    devices = {a["device"] for a in merged["artifacts"]}
    assert DEVICE in devices and len(devices) == 2 and set(merged["hosts"]) == devices
    assert "device" in done.stdout
    gate = run_bench_cli("gate", merged_path, "--max-top1-drop", "50", "--min-agreement", "0.5")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    plot = run_bench_cli("plot", merged_path, "--out", tmp_path / "merged.png")
    assert plot.returncode == 0 and (tmp_path / "merged.png").stat().st_size > 20_000
    again = run_bench_cli("merge", host_report, host_report, "--out", tmp_path / "twice.json")
    assert again.returncode == 2 and "also in" in again.stderr


@pytest.mark.parametrize("damage", ["flip a byte", "delete"])
def test_a_corrupted_bundle_is_refused(bundle: Path, device_venv: Path, tmp_path: Path, damage: str) -> None:
    root = unpack(bundle, tmp_path)
    model = root / "models" / "googlenet.int8.onnx"
    if damage == "delete":
        model.unlink()
    else:
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    done = subprocess.run(
        [str(device_venv), "-I", "run.py", "--runs", "1"], cwd=root, env=bare_env(), capture_output=True, text=True
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "googlenet.int8.onnx" in lines[0]
    assert ("corrupted" if damage != "delete" else "missing") in lines[0]
    assert not list(root.parent.glob("results-*.json")) and not list(root.glob("results-*.json"))


def test_bundle_usage_errors(run_bench_cli, tmp_path: Path, imagenet_sample_dir: Path, bench_artifacts: dict) -> None:
    done = run_bench_cli(
        "bundle", bench_artifacts["folder"], "--eval", tmp_path / "nope", "--out", tmp_path / "b.tar.gz"
    )
    assert done.returncode == 2 and "evaluation folder not found" in done.stderr
    done = run_bench_cli(
        "bundle", bench_artifacts["folder"], "--eval", imagenet_sample_dir, "--out", tmp_path / "b.zip"
    )
    assert done.returncode == 2 and ".tar.gz" in done.stderr
    assert not list(tmp_path.iterdir())


def test_a_device_with_one_runtime_skips_the_other_format(bundle: Path, tmp_path: Path) -> None:
    """A Pi with only ai-edge-litert: the ONNX models are skipped with a note, the TFLite ones measured."""
    root = unpack(bundle, tmp_path)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoOrt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'onnxruntime' or name.startswith('onnxruntime.'):\n"
        "            raise ImportError('hidden by the test')\n"
        "sys.meta_path.insert(0, _NoOrt())\n"
    )
    manifest = json.loads((root / "manifest.json").read_text())
    tflite = [m["name"] for m in manifest["models"] if m["format"] == "tflite"]
    if not tflite:
        pytest.skip("no TFLite models in the bundle (TensorFlow not installed)")
    env = {**bare_env(), "PYTHONPATH": str(hide)}
    command = [sys.executable, "run.py", "--threads", "1", "--runs", "1", "--warmup", "0", "--out", "r.json"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping googlenet.onnx: pip install onnxruntime" in done.stderr
    measured = json.loads((root / "r.json").read_text())
    assert sorted(a["name"] for a in measured["artifacts"]) == sorted(tflite)


# ---------------------------------------------------------------- on ARM's own kernels (QEMU user-mode emulation)

ARM_CPU = "neoverse-n1"
INT8_MODELS = ("googlenet.int8.onnx", "googlenet.int8.tflite")


@pytest.fixture(scope="session")
def emulated_results(run_bench_cli, bundle: Path, tmp_path_factory) -> Path:
    """The bundle's own runner on an emulated Neoverse-N1, the int8 models only (a few seconds per photo)."""
    from benchmarks.emulation_env import EmulationEnv, default_cache_dir, runtime_pins

    env = EmulationEnv(default_cache_dir(), runtime_pins())
    if env.problem() is not None:
        reason = f"no aarch64 environment in {env.path} ({env.problem()}): python -m benchmarks emulate --setup"
        if os.environ.get("GOOGLENET_EDGE_REQUIRE_EMULATION"):
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("emulated")
    only = [arg for name in INT8_MODELS for arg in ("--only", name)]
    done = run_bench_cli("emulate", bundle, "--cpu", ARM_CPU, *only, "--out-dir", out, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not timed" in done.stdout
    return out / f"results-qemu-{ARM_CPU}.json"


def test_the_emulated_device_is_aarch64_with_xnnpack(emulated_results: Path, host_report: Path) -> None:
    report = json.loads(emulated_results.read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    host = report["host"]
    assert host["machine"] == "aarch64" and host["emulation"]["qemu_cpu"] == ARM_CPU
    assert "dotprod" in host["isa"] and "neon" in host["isa"]  # the hwcaps QEMU grants a Neoverse-N1
    assert host["runtimes"]["onnxruntime"] == metadata.version("onnxruntime")
    host_accuracy = {a["name"]: a["accuracy"] for a in json.loads(host_report.read_text())["artifacts"]}
    assert sorted(a["name"] for a in report["artifacts"]) == sorted(INT8_MODELS)
    for artifact in report["artifacts"]:
        assert artifact["device"] == f"aarch64-qemu ({ARM_CPU})"
        assert artifact["latency_ms"] == {} and "not timed" in artifact["timing"]
        accuracy = artifact["accuracy"]
        assert accuracy["images"] == EVAL_SIZE and "emulated" not in accuracy
        assert accuracy["vs_reference"]["cosine_mean"] > 0.99  # ARM kernels, same model: close to FP32
        if artifact["format"] == "onnx":  # on aarch64 ONNX Runtime fuses every QDQ convolution and the fc
            assert artifact["kernels"]["int8_compute_ops"] == artifact["kernels"]["compute_ops"] == 58
            assert artifact["kernels"]["ops"]["QLinearConv"] == 57 and artifact["kernels"]["int8_mac_share"] == 1.0
        if artifact["format"] == "tflite":
            assert artifact["runtime"]["xnnpack"] is True and artifact["runtime"]["delegate_nodes"] > 0
            # XNNPACK's int8 on aarch64 stays within rounding of its x86 kernels (bit-identical on some hosts)
            host_vs = host_accuracy[artifact["name"]]["vs_reference"]
            assert abs(accuracy["vs_reference"]["cosine_mean"] - host_vs["cosine_mean"]) < 1e-4
            assert abs(accuracy["vs_reference"]["top1_agreement"] - host_vs["top1_agreement"]) <= 1 / EVAL_SIZE


def test_merge_and_gate_judge_the_arm_figures(
    run_bench_cli, emulated_results: Path, host_report: Path, tmp_path: Path
) -> None:
    from benchmarks.compare import compare
    from benchmarks.gate import GateThresholds, judge
    from benchmarks.plot import plot_report
    from export.errors import ToolkitError

    merged = tmp_path / "merged.json"
    done = run_bench_cli("merge", host_report, emulated_results, "--out", merged)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(merged.read_text())
    arm = f"aarch64-qemu ({ARM_CPU})"
    assert {a["device"] for a in report["artifacts"]} == {arm, report["artifacts"][0]["device"]} != {arm}
    verdicts = judge(report, GateThresholds(min_agreement=0.5, max_latency_ratio=2.0), [arm])
    assert sorted(v.name for v in verdicts) == sorted(INT8_MODELS) and all(v.passed for v in verdicts)
    assert all("latency: not timed (emulated CPU)" in v.checked for v in verdicts)
    with pytest.raises(ToolkitError, match="a-board-not-there"):
        judge(report, GateThresholds(), ["a-board-not-there"])
    failing = run_bench_cli("gate", merged, "--device", arm, "--max-top1-drop", "-100")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    fails = [line for line in failing.stderr.splitlines() if line.startswith("FAIL")]
    assert len(fails) == len(INT8_MODELS) and all(arm in line and "as computed on" in line for line in fails)
    assert plot_report(report, tmp_path / "merged.png").stat().st_size > 0  # the untimed rows are left out
    changes = [c for c in compare(report, report) if c.device == arm]
    assert changes and all(c.verdict == "same" for c in changes)
    assert {c.metric for c in changes if c.old is None} >= {"ms p50 (best threads)", "peak RSS MB"}  # not timed
