"""The ceiling models: written the same way every time, each computing its convolution in its real runtime, the
int8 ones on int8 kernels, and the measured ceiling built from their timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.ceiling_models import ceiling_models_dir, write_ceiling_models
from benchmarks.emulation_env import CACHE_ENV
from edge_runtime.ceiling import CEILING_INPUT, CEILING_MODELS, CHANNELS, KERNEL, SIDE, measure_ceiling
from edge_runtime.formats import format_of, open_session
from edge_runtime.kernel_coverage import coverage

NAMES = sorted({name for names in CEILING_MODELS.values() for name in names})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ceiling_models(tmp_path_factory.mktemp("ceiling"))


def _sample(path: Path) -> np.ndarray:
    return np.random.default_rng(0).uniform(-2, 2, CEILING_INPUT[format_of(path).layout]).astype(np.float32)


def _nchw(path: Path, output: np.ndarray) -> np.ndarray:
    return output.transpose(0, 3, 1, 2) if format_of(path).layout == "NHWC" else output


def test_same_bytes_every_time(models: Path, tmp_path: Path) -> None:
    again = write_ceiling_models(tmp_path / "again")
    assert sorted(p.name for p in models.iterdir()) == NAMES
    assert all((models / name).read_bytes() == (again / name).read_bytes() for name in NAMES)


def test_each_model_computes_the_convolution(models: Path) -> None:
    """FP32 ONNX against numpy at a few output positions (padding included); every other model against it."""
    from benchmarks.ceiling_models import _weights

    x = _sample(models / "ceiling.onnx")
    reference = open_session(models / "ceiling.onnx", 1)(x)
    assert reference.shape == (1, CHANNELS, SIDE, SIDE)
    padded = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    weights = _weights().astype(np.float64)
    for row, col in ((0, 0), (13, 7), (SIDE - 1, SIDE - 1)):
        window = padded[:, row : row + KERNEL, col : col + KERNEL]
        expected = np.einsum("oikl,ikl->o", weights, window)
        np.testing.assert_allclose(reference[0, :, row, col], expected, rtol=1e-4, atol=1e-4)
    spread = float(np.abs(reference).max())
    for name in NAMES:
        path = models / name
        nhwc = format_of(path).layout == "NHWC"
        got = _nchw(path, open_session(path, 1)(x.transpose(0, 2, 3, 1) if nhwc else x))
        # NHWC models get the same numbers in their own layout; int8 ones within two output steps (0.5 each)
        tolerance = 1e-4 * spread if "int8" not in name and "8s8" not in name else 1.0
        assert np.abs(got - reference).max() <= tolerance, name


def test_the_int8_models_run_on_int8_kernels(models: Path) -> None:
    for name in ("ceiling.u8s8.onnx", "ceiling.s8s8.onnx", "ceiling.int8.tflite"):
        kernels = coverage(models / name, _sample(models / name))
        assert (kernels["compute_ops"], kernels["int8_compute_ops"]) == (1, 1), (name, kernels)
    litert = coverage(models / "ceiling.int8.tflite", _sample(models / "ceiling.int8.tflite"))
    assert litert["delegated_ops"] == litert["total_ops"]  # XNNPACK runs all three ops
    fp32 = coverage(models / "ceiling.onnx", _sample(models / "ceiling.onnx"))
    assert (fp32["compute_ops"], fp32["int8_compute_ops"]) == (1, 0)


def test_the_ceiling_is_measured_per_runtime_precision_and_threads(models: Path) -> None:
    gmacs = measure_ceiling([1], {"onnxruntime", "litert"}, runs=3, folder=models)
    assert {(runtime, precision) for runtime in gmacs for precision in gmacs[runtime]} == set(CEILING_MODELS)
    assert all(per_threads["1"] > 0 for runtime in gmacs.values() for per_threads in runtime.values())


def test_the_cache_is_written_once_and_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = ceiling_models_dir()
    assert folder.parent == tmp_path / "googlenet-edge" and sorted(p.name for p in folder.iterdir()) == NAMES
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert ceiling_models_dir() == folder and {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind
