"""Shared fixtures: the shared assets (or a skip with the reason), real photos, one BVLC export per session.

`bvlc_onnx_export` exports the real BVLC weights once per session (with the default 500-image evaluation,
so its sidecar carries top-1/top-5 and the agreement with the source ONNX); every module that needs a
real FP32 GoogLeNet artifact (export checks, int8 quantization, benchmarks) should reuse it rather than
export again.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge_runtime.hostinfo import usable_cores
from export import paths
from export.images import list_images
from export.model import GoogLeNet
from export.onnx_export import OnnxExportOptions, OnnxExportResult, export_onnx
from export.sample_images import builtin_photos
from export.weights import LoadedModel, load_model

PROJECT_ROOT = paths.PROJECT_ROOT


def pytest_configure(config: pytest.Config) -> None:
    """Under `-n N`, each worker (and every process it starts) gets its own share of the cores. Two workers
    each running torch's, TensorFlow's and ONNX Runtime's thread pools across both cores of a 2-core runner
    thrash: a test that takes 18 s alone took 101 s in the full tier. The toolkit sizes its own parallel work
    by the affinity mask (`edge_runtime.hostinfo.usable_cores`), as it would under `taskset` or a cpuset."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count:
        return
    ALL_CORES.update(cores)
    share = cores[int(worker.removeprefix("gw")) :: count]
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))  # torch sized its pool when it was imported, before the pinning


ALL_CORES: set[int] = set()  # the cores before a worker was pinned (empty: not pinned)


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """Every core again for the block (and the processes and threads it starts): for the tests of what the
    toolkit does with more than one core (parallel calibration, two evaluation workers), which a pinned
    worker would otherwise never run."""
    if not ALL_CORES:
        yield
        return
    pinned, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, ALL_CORES)
    torch.set_num_threads(len(ALL_CORES))
    assert usable_cores() == len(ALL_CORES) > 1
    try:
        yield
    finally:
        os.sched_setaffinity(0, pinned)
        torch.set_num_threads(threads)


def _missing(what: str, where: Path) -> str:
    return f"shared {what} not found at {where}; set ${paths.SHARED_ENV}"


@pytest.fixture(scope="session")
def bvlc_weights() -> Path:
    """The real BVLC GoogLeNet ONNX (`$GOOGLENET_SHARED/weights/bvlc_googlenet.onnx`), else skip."""
    found = paths.bvlc_onnx()
    if found is None:
        pytest.skip(_missing("BVLC weights", paths.shared_dir() / "weights" / "bvlc_googlenet.onnx"))
    return found


@pytest.fixture(scope="session")
def imagenet_sample_dir() -> Path:
    """The 500 labelled ImageNet photos (`$GOOGLENET_SHARED/data/imagenet-sample`), else skip."""
    found = paths.imagenet_sample()
    if found is None:
        pytest.skip(_missing("ImageNet sample", paths.shared_dir() / "data" / "imagenet-sample"))
    return found


@pytest.fixture(scope="session")
def synset_words_file() -> Path:
    """`$GOOGLENET_SHARED/data/synset_words.txt` (the 1000 ImageNet class names), else skip."""
    found = paths.synset_words()
    if found is None:
        pytest.skip(_missing("ImageNet label list", paths.shared_dir() / "data" / "synset_words.txt"))
    return found


@pytest.fixture(scope="session")
def shared_photos() -> list[Path]:
    """Real photos: the shared `data/photos` when present, else scikit-image's bundled photographs."""
    folder = paths.sample_photos()
    photos = list_images(folder).images if folder else []
    photos = photos or builtin_photos()
    assert photos, "no real photos available (neither shared data/photos nor scikit-image's data)"
    return photos


@pytest.fixture(scope="session")
def bvlc_loaded(bvlc_weights: Path) -> LoadedModel:
    """The BVLC weights in the reference model (eval mode); shared, do not modify it."""
    return load_model(bvlc_weights)


@pytest.fixture(scope="session")
def bvlc_onnx_export(bvlc_loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> OnnxExportResult:
    """The BVLC weights exported once per session, evaluated on the default 500-image sample when present."""
    out_dir = tmp_path_factory.mktemp("bvlc_onnx_export")
    return export_onnx(bvlc_loaded, OnnxExportOptions(out_dir=out_dir))


def lively_reference_state_dict(num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded reference GoogLeNet state_dict with He-initialised weights.

    PyTorch's default initialisation makes this 57-convolution network's logits practically constant
    across images (the activations die out), so a comparison of two runtimes on it could not fail; with
    He initialisation the logits differ from photo to photo.
    """
    generator = torch.Generator().manual_seed(seed)
    model = GoogLeNet(num_classes=num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.01)
    return model.state_dict()


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000-class reference `state_dict` saved with `torch.save` (see `lively_reference_state_dict`)."""
    path = tmp_path_factory.mktemp("reference_checkpoint") / "reference.pt"
    torch.save(lively_reference_state_dict(1000, seed=0), path)
    return path


@pytest.fixture(scope="session")
def ten_class_state() -> dict[str, torch.Tensor]:
    """A 10-class reference `state_dict` (a fine-tune's shape), see `lively_reference_state_dict`."""
    return lively_reference_state_dict(10, seed=1)


@pytest.fixture(scope="session")
def ten_class_checkpoint(ten_class_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ten_class_state` as a training script with DataParallel saves it: `{"state_dict": {"module.<key>": ...}}`.
    Loading it needs `--num-classes 10`."""
    path = tmp_path_factory.mktemp("ten_class_checkpoint") / "ten_classes.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ten_class_state.items()}, "epoch": 12}, path)
    return path


def _cli_env(overrides: dict[str, str | None]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != paths.WEIGHTS_ENV}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


CliRunner = Callable[..., subprocess.CompletedProcess]


def _run_module(
    module: str, args: tuple, env: dict[str, str | None] | None, timeout: float, cwd: Path | None
) -> subprocess.CompletedProcess:
    """`python -m <module> ...` with this environment (no `$GOOGLENET_WEIGHTS`) updated with `env`; text output."""
    return subprocess.run(
        [sys.executable, "-m", module, *(str(a) for a in args)],
        cwd=cwd or PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=_cli_env(env or {}),
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def run_export_cli() -> CliRunner:
    """`run_export_cli("onnx", "--no-eval", ..., env={"TMPDIR": ...})` runs `python -m export ...` in the
    project root and returns the `CompletedProcess` (text stdout/stderr).

    The child gets this environment without `$GOOGLENET_WEIGHTS` (so that no weights means random init),
    updated with `env` (a value of None removes a variable).
    """

    def run(
        *args: str | Path, env: dict[str, str | None] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        return _run_module("export", args, env, timeout, None)

    return run


@pytest.fixture(scope="session")
def run_bench_cli() -> CliRunner:
    """`run_bench_cli("gate", report, cwd=tmp)` runs `python -m benchmarks ...` (in `cwd`, default the project)."""

    def run(*args: object, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        return _run_module("benchmarks", args, {"PYTHONPATH": str(PROJECT_ROOT)}, timeout, cwd)

    return run


@pytest.fixture(scope="session")
def ten_class_dynamic_export(
    run_export_cli: CliRunner, ten_class_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m export onnx --weights ten_classes.pt --num-classes 10 --dynamic-batch --no-eval`."""
    out_dir = tmp_path_factory.mktemp("ten_class_dynamic") / "out"
    result = run_export_cli(
        "onnx",
        "--weights",
        ten_class_checkpoint,
        "--num-classes",
        "10",
        "--dynamic-batch",
        "--no-eval",
        "--out",
        out_dir,
    )
    return result, out_dir


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def bench_artifacts(
    bvlc_onnx_export: OnnxExportResult, bvlc_loaded: LoadedModel, imagenet_sample_dir: Path, tmp_path_factory
) -> dict:
    """A folder of real artifacts for the benchmark and bundle tests: FP32 ONNX, int8 ONNX (16 calibration
    photos), a deliberately broken int8 ONNX (calibrated on one black image), and, when TensorFlow is
    installed, fp32 and int8 TFLite (16 photos)."""
    import shutil

    from PIL import Image

    from export.artifacts import sidecar_path
    from quantize.calibration import ArraySource, FolderSource
    from quantize.onnx_int8 import quantize_onnx
    from quantize.presets import QuantizationConfig

    folder = tmp_path_factory.mktemp("bench_artifacts")
    fp32 = folder / "googlenet.onnx"
    shutil.copyfile(bvlc_onnx_export.path, fp32)
    shutil.copyfile(sidecar_path(bvlc_onnx_export.path), sidecar_path(fp32))
    calib = FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=16, seed=0)
    quantize_onnx(fp32, calib, QuantizationConfig.arm64(), out_path=folder / "googlenet.int8.onnx")
    black = bvlc_loaded.preprocess.apply(Image.new("RGB", (256, 256)))[None]
    quantize_onnx(fp32, ArraySource(black), QuantizationConfig.arm64(), out_path=folder / "googlenet-black.int8.onnx")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        from export.tflite_export import input_preprocess
        from quantize.tflite_quant import export_tflite

        calib_nhwc = FolderSource(
            imagenet_sample_dir, input_preprocess(bvlc_loaded.preprocess, "float32"), size=16, seed=0
        )
        export_tflite(bvlc_loaded, fp32, folder, "int8", calibration=calib_nhwc)
    models = sorted(p for p in folder.iterdir() if p.suffix in (".onnx", ".tflite"))
    return {"folder": folder, "models": models}


def convert_tiny_tflite(function, path: Path, int8: bool, input_shape: tuple[int, ...] = (1, 8, 8, 3)) -> Path:
    """A small `tf.function` converted to `path`, fp32 or int8 end to end (float I/O, 4 random calibration inputs)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.normal(size=input_shape).astype(np.float32)] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path.write_bytes(converter.convert())
    return path


# -- failures: what a failed or interrupted run may leave behind ------------------------------------------
ORT_SESSION_FILE = ".ses"  # ONNX Runtime's telemetry writes this id file into $TMPDIR on import: not ours


def left_in(folder: Path) -> list[str]:
    """What a run left in a folder it was given ($TMPDIR, --out, a mount), ONNX Runtime's `.ses` aside."""
    return sorted(p.name for p in folder.iterdir() if p.name != ORT_SESSION_FILE) if folder.exists() else []


def assert_one_error(result: subprocess.CompletedProcess, code: int, *fragments: str, only_line: bool = False) -> str:
    """No traceback, exit `code`, exactly one `error:` line, the last on stderr (the only one with
    `only_line`: the run failed before any progress output), holding every fragment; returns it."""
    output = result.stderr + result.stdout
    assert "Traceback" not in output, result.stderr[-3000:]
    assert result.returncode == code, f"exit {result.returncode}, expected {code}\n{result.stderr[-3000:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    if only_line:
        assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def mount_tmpfs(tmp_path: Path):
    """`mount_tmpfs("10m")` mounts a real tmpfs of that size (`mount_tmpfs("1m", "ro")`: read-only) and
    returns it; skips with the reason where mounting is not permitted; unmounted at teardown."""
    import shutil

    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no `mount` command here: cannot make a small filesystem")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)), "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}); needs root")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False, capture_output=True)


def eight_bit_max_pools(optimized: Path) -> list[str]:
    """MaxPools that ONNX Runtime runs on 8-bit NCHW tensors (its generic, slow kernel)."""
    import onnx

    graph = onnx.load(str(optimized)).graph
    eight_bit: set[str] = set()
    found = []
    for node in graph.node:  # topological order
        if node.op_type == "MaxPool" and node.domain == "" and node.input[0] in eight_bit:
            found.append(node.name)
        produces_8bit = node.op_type in ("QuantizeLinear", "NhwcMaxPool") or node.op_type.startswith("QLinear")
        if produces_8bit or (node.op_type in ("MaxPool", "Transpose") and node.input[0] in eight_bit):
            eight_bit.update(node.output)
    return found
