"""Issue 14, the failures caught before any slow work: non-finite calibration data, an unusable `--out`,
an `--eval` folder without images, a state_dict tensor of the wrong shape (real processes, each with its
own `$TMPDIR`), and the pieces behind the slower cases (publishing on a real full filesystem, the
decompression-bomb limit, tie-breaking in the per-layer report, the gate without accuracy figures).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_error, left_in

from export import paths
from export.artifacts import publish
from export.cli import run_guarded
from export.errors import EXIT_SIGTERM, ToolkitError
from export.images import load_image
from export.preprocess import BVLC_PREPROCESS
from quantize.calibration import ArraySource, FolderSource, IterableSource

EXPORT_STARTED = "exporting to ONNX"


def write_huge_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit grayscale PNG of side x side pixels (400 M pixels for 20000: past PIL's bomb limit)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def naninf(shape: tuple[int, ...]) -> np.ndarray:
    """The issue's array: random normal x 50 with one NaN, one +inf and one -inf."""
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 50
    data[0, 0, 0, 0], data[1, 1, 1, 1], data[2, 2, 2, 2] = np.nan, np.inf, -np.inf
    return data


# -- rejected before the export, in real processes ---------------------------------------------------------
@dataclass
class Case:
    fmt: str
    args: list[str | Path]
    says: tuple[str, ...]  # fragments of the error line (file names included)
    out: Path | None = None  # default: <case>/out
    needs_tf: bool = False


def _cases(root: Path, checkpoint: Path) -> dict[str, Case]:
    np.save(root / "naninf.npy", naninf((4, 3, 224, 224)))
    np.save(root / "naninf_nhwc.npy", naninf((4, 224, 224, 3)))
    (root / "a_file").write_text("not a folder\n")
    (root / "no_photos").mkdir()
    (root / "no_photos" / "notes.txt").write_text("no photos here\n")
    state = torch.load(checkpoint, weights_only=True)
    state["inception3a.branch1.conv.weight"] = torch.zeros(65, 192, 1, 1)
    torch.save(state, root / "wrong_shape.pt")
    int8 = ["--quantize", "int8", "--no-eval", "--calib-size", "8"]
    shape = ("wrong_shape.pt", "inception3a.branch1.conv.weight", "(65, 192, 1, 1)", "(64, 192, 1, 1)")
    cases = {
        "naninf_npy": Case("onnx", [*int8, "--calib", root / "naninf.npy"], ("naninf.npy", "NaN or infinite")),
        "naninf_nhwc_tflite": Case(
            "tflite", [*int8, "--calib", root / "naninf_nhwc.npy"], ("naninf_nhwc.npy", "NaN or infinite"), None, True
        ),
        "out_is_a_file": Case("onnx", ["--no-eval"], ("a_file", "not a folder"), root / "a_file"),
        "out_under_a_file": Case("onnx", ["--no-eval"], ("a_file", "under a file"), root / "a_file" / "out"),
        "eval_without_images": Case("onnx", ["--eval", root / "no_photos"], ("no_photos", "no images")),
        "wrong_shape_onnx": Case("onnx", ["--no-eval"], shape),
        "wrong_shape_tflite": Case("tflite", ["--no-eval"], shape, None, True),
    }
    if Path("/proc/self").exists():
        cases["out_under_proc"] = Case("onnx", ["--no-eval"], ("/proc/x", "not writable"), Path("/proc/x"))
    return cases


@pytest.fixture(scope="module")
def early_failures(run_export_cli, reference_checkpoint: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("early_failures")
    cases = _cases(root, reference_checkpoint)
    try:
        import tensorflow  # noqa: F401

        has_tf = True
    except ImportError:
        has_tf = False

    def run(item: tuple[str, Case]) -> tuple[str, tuple]:
        name, case = item
        if case.needs_tf and not has_tf:
            return name, (case, None, None, None)
        tmp, out = root / name / "tmp", case.out or root / name / "out"
        tmp.mkdir(parents=True)
        weights = root / "wrong_shape.pt" if name.startswith("wrong_shape") else reference_checkpoint
        args = [case.fmt, "--weights", weights, *case.args, "--out", out]
        return name, (case, run_export_cli(*args, env={"TMPDIR": str(tmp)}, timeout=300), out, tmp)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, cases.items()))


@pytest.mark.slow  # eight CLI runs, two of them import TensorFlow (~90 s on 2 cores)
@pytest.mark.parametrize(
    "name",
    [
        "naninf_npy",
        "naninf_nhwc_tflite",
        "out_is_a_file",
        "out_under_a_file",
        "out_under_proc",
        "eval_without_images",
        "wrong_shape_onnx",
        "wrong_shape_tflite",
    ],
)
def test_refused_in_one_line_before_the_export(name: str, early_failures: dict) -> None:
    if name not in early_failures:
        pytest.skip("no /proc on this system")
    case, result, out, tmp = early_failures[name]
    if result is None:
        pytest.skip("TensorFlow is not installed (the optional [tflite] extra)")
    if name.startswith("naninf") and paths.synset_words() is None:  # the CLI first warns that it is missing
        pytest.skip(f"no ImageNet label list in {paths.shared_dir()}: set $GOOGLENET_SHARED")
    assert_one_error(result, 2, *case.says, only_line=True)
    assert EXPORT_STARTED not in result.stderr
    if out.is_dir():
        assert left_in(out) == []
    elif not out.is_file():
        assert not out.exists()
    assert left_in(tmp) == [], f"left in $TMPDIR: {left_in(tmp)}"


def test_benchmarks_usage_errors_name_the_command_typed(run_bench_cli) -> None:
    done = run_bench_cli("run", "--runs", "0")
    assert_one_error(done, 2, "--runs", only_line=True)
    assert done.stderr.startswith("error: python -m benchmarks run: "), done.stderr


# -- the pieces, in-process ------------------------------------------------------------------------------
def test_non_finite_calibration_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "naninf.npy", naninf((4, 3, 8, 8)))
    with pytest.raises(ToolkitError, match=r"naninf\.npy: calibration arrays contain 3 NaN or infinite values"):
        ArraySource(tmp_path / "naninf.npy")
    with pytest.raises(ToolkitError, match="NaN or infinite"):
        IterableSource([np.full((3, 8, 8), np.inf, np.float32)])
    assert len(ArraySource(np.nan_to_num(naninf((4, 3, 8, 8)))).array) == 4  # finite data passes


def test_an_image_past_the_decompression_bomb_limit_is_skipped_and_named_once(
    shared_photos: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, photo in enumerate(shared_photos[:2]):
        load_image(photo).resize((64, 64)).save(folder / f"p{index}.jpg")
    bomb = write_huge_png(folder / "huge.png")
    with pytest.raises(ToolkitError, match=r"huge\.png: image too large to decode safely"):
        load_image(bomb)
    source = FolderSource(folder, BVLC_PREPROCESS, size=3)
    described = source.describe()
    assert described["images"] == 2 and len(described["unreadable"]) == 1
    (entry,) = described["unreadable"]
    assert entry.startswith("huge.png: image too large") and entry.count("huge.png") == 1, entry


def test_publish_on_a_full_filesystem_keeps_the_earlier_files_whole(mount_tmpfs, tmp_path: Path) -> None:
    disk = mount_tmpfs("1m")
    out = disk / "out"
    out.mkdir()
    (out / "a.bin").write_bytes(b"old a")
    (out / "b.bin").write_bytes(b"old b")
    staged = {tmp_path / "a.bin": out / "a.bin", tmp_path / "b.bin": out / "b.bin"}
    (tmp_path / "a.bin").write_bytes(b"\x01" * 100_000)
    (tmp_path / "b.bin").write_bytes(b"\x02" * 2_000_000)  # does not fit
    with pytest.raises(ToolkitError, match=r"out: no space left on device writing b\.bin"):
        publish(staged)
    assert left_in(out) == ["a.bin", "b.bin"]
    assert (out / "a.bin").read_bytes() == b"old a" and (out / "b.bin").read_bytes() == b"old b"
    with pytest.raises(ToolkitError, match="no space left on device"):
        publish({tmp_path / "b.bin": disk / "new" / "deeper" / "b.bin"})
    assert left_in(disk) == ["out"], "a folder made for a failed publish must go too"


def test_publish_replaces_the_whole_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin").write_bytes(b"old a")
    (tmp_path / "a.bin").write_bytes(b"new a")
    (tmp_path / "b.bin").write_bytes(b"new b")
    publish({tmp_path / "a.bin": out / "a.bin", tmp_path / "b.bin": out / "b.bin"})
    assert [(out / n).read_bytes() for n in left_in(out)] == [b"new a", b"new b"]


def test_a_signal_a_library_swallowed_still_publishes_nothing(tmp_path: Path) -> None:
    """A real SIGTERM whose exception a library catches and carries on past (torch's ONNX exporter did, once
    under load, and the export then published its files and exited 0): the command still exits 143 and
    `publish` moves nothing into place; a later call in the same process is not affected."""
    staged, final = tmp_path / "stage" / "model.onnx", tmp_path / "out" / "model.onnx"
    staged.parent.mkdir()
    staged.write_bytes(b"model")

    def command_whose_library_swallows_the_signal() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        except BaseException:
            pass  # what the library did with it
        publish({staged: final})
        return 0

    assert run_guarded(command_whose_library_swallows_the_signal) == EXIT_SIGTERM
    assert not final.parent.exists() or not any(final.parent.iterdir())
    publish({staged: final})  # no signal now
    assert final.read_bytes() == b"model"


def test_ties_in_the_per_layer_report_are_broken_by_name() -> None:
    from quantize.drift import worst_first

    rows = [
        {"tensor": "view", "sqnr_db": 21.807061234},
        {"tensor": "avgpool", "sqnr_db": 21.807060987},  # equal as stored (7 significant digits)
        {"tensor": "conv1", "sqnr_db": 30.0},
        {"tensor": "fc", "sqnr_db": None},
        {"tensor": "pool1", "sqnr_db": 5.0},
    ]
    for order in (rows, rows[::-1]):
        assert [r["tensor"] for r in worst_first(order)] == ["pool1", "avgpool", "view", "conv1", "fc"]


def test_gate_without_accuracy_figures_fails_and_says_why() -> None:
    from benchmarks.gate import GateThresholds, judge

    artifact = {"name": "googlenet.int8.onnx", "device": "host", "size_bytes": 7_000_000, "latency_ms": {}}
    report = {"artifacts": [{**artifact, "accuracy": None}]}
    (verdict,) = judge(report, GateThresholds())
    assert not verdict.passed and "no top-1 drop or agreement figure" in verdict.failures[0]
    (verdict,) = judge(report, GateThresholds(max_top1_drop=None, min_agreement=None, max_size_mb=10))
    assert verdict.passed, "without an accuracy threshold there is nothing missing"


def test_state_dict_shape_check_names_key_and_shapes(reference_checkpoint: Path, tmp_path: Path) -> None:
    from export.weights import load_model

    state = torch.load(reference_checkpoint, weights_only=True)
    state["fc.bias"] = torch.zeros(999)
    torch.save(state, tmp_path / "bad_bias.pt")
    with pytest.raises(ToolkitError, match=r"bad_bias\.pt: fc\.bias has shape \(999,\), expected \(1000,\)"):
        load_model(tmp_path / "bad_bias.pt")


def test_subprocess_helpers_see_this_tree() -> None:
    """The CLI tests run `python -m export` in a child: it must import this checkout, not another install."""
    import export

    done = subprocess.run(
        [__import__("sys").executable, "-c", "import export; print(export.__file__)"],
        cwd=export.paths.PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()).resolve() == Path(export.__file__).resolve()
