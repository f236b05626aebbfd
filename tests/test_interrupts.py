"""Issue 14, the failures in the middle of a run: real signals sent to real `python -m export` processes,
and real small filesystems (tmpfs) for `--out` and `$TMPDIR`. Each run gets a private `$TMPDIR`, so
anything it leaves behind (staging folders, temporary files, caches) shows up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_one_error, left_in

from export import paths

pytestmark = pytest.mark.slow


class Running:
    """`python -m export ...` started in the background, its stderr collected as it comes."""

    def __init__(self, args: list[str | Path], tmpdir: Path, **env: str) -> None:
        child_env = {k: v for k, v in os.environ.items() if k != paths.WEIGHTS_ENV}
        child_env.update(TMPDIR=str(tmpdir), **env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "export", *(str(a) for a in args)],
            cwd=paths.PROJECT_ROOT,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Until `text` appears on stderr (fails if the process ends first)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stderr):
            assert self.proc.poll() is None, f"ended (exit {self.proc.returncode}) before {text!r}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.text()}"
            time.sleep(0.1)

    def text(self) -> str:
        return "".join(self.stderr)

    def finish(self, timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(10)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, "".join(self.stdout), self.text())


def export_args(weights: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["onnx", "--weights", weights, "--no-eval", *extra, "--out", out]


def _private_tmp(tmp_path: Path) -> Path:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return tmp


# -- signals ----------------------------------------------------------------------------------------------
def test_sigterm_during_the_export_exits_143_and_leaves_nothing(bvlc_weights: Path, tmp_path: Path) -> None:
    tmp, out = _private_tmp(tmp_path), tmp_path / "out"
    run = Running(export_args(bvlc_weights, out), tmp)
    run.wait_for("exporting to ONNX")
    assert any(p.name.startswith(".googlenet-stage-") for p in tmp.iterdir()), "no staging folder to clean up"
    time.sleep(1.0)  # inside torch.onnx.export
    run.proc.send_signal(signal.SIGTERM)
    result = run.finish()
    assert_one_error(result, 143, "terminated")
    assert not out.exists()
    assert left_in(tmp) == [], f"left in $TMPDIR: {left_in(tmp)}"


def test_sigterm_during_the_tflite_int8_conversion_exits_143_and_leaves_nothing(
    bvlc_weights: Path, imagenet_sample_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorflow", reason="the TFLite converter is the optional extra: pip install -e '.[tflite]'")
    tmp, out = _private_tmp(tmp_path), tmp_path / "out"
    args = ["tflite", "--weights", bvlc_weights, "--no-eval", "--quantize", "int8"]
    run = Running([*args, "--calib", imagenet_sample_dir, "--calib-size", "8", "--out", out], tmp)
    run.wait_for("converting to TFLite int8")
    time.sleep(2.0)  # the converter is pulling calibration batches through a Python callback
    run.proc.send_signal(signal.SIGTERM)
    result = run.finish()
    assert_one_error(result, 143, "terminated")
    assert not out.exists()
    assert left_in(tmp) == [], f"left in $TMPDIR: {left_in(tmp)}"


# -- small filesystems ------------------------------------------------------------------------------------
def test_out_on_a_full_disk_is_one_line_and_leaves_nothing(
    run_export_cli, mount_tmpfs, bvlc_weights: Path, tmp_path: Path
) -> None:
    disk, tmp = mount_tmpfs("10m"), _private_tmp(tmp_path)
    result = run_export_cli(*export_args(bvlc_weights, disk / "out"), env={"TMPDIR": str(tmp)})
    assert_one_error(result, 2, f"{disk / 'out'}: no space left on device writing googlenet.onnx")
    assert left_in(disk) == [], f"left on the full disk: {left_in(disk)}"
    assert left_in(tmp) == []


def test_int8_that_does_not_fit_publishes_neither_model(
    run_export_cli, mount_tmpfs, bvlc_weights: Path, imagenet_sample_dir: Path, tmp_path: Path
) -> None:
    """28 MB FP32 fits on 32 MB, FP32 + int8 do not: the pair is published together or not at all."""
    disk, tmp = mount_tmpfs("32m"), _private_tmp(tmp_path)
    int8 = ["--quantize", "int8", "--calib", imagenet_sample_dir, "--calib-size", "8"]
    result = run_export_cli(*export_args(bvlc_weights, disk / "out", *int8), env={"TMPDIR": str(tmp)})
    assert "quantizing for arm64" in result.stderr, "the run must reach the int8 step"
    assert_one_error(result, 2, f"{disk / 'out'}: no space left on device writing googlenet")
    assert "Wire format" not in result.stderr  # what an int8 step reading a truncated file used to say
    assert left_in(disk) == [], f"left on the full disk: {left_in(disk)}"
    assert left_in(tmp) == []


def test_a_full_tmpdir_is_one_line_and_leaves_nothing(
    run_export_cli, mount_tmpfs, bvlc_weights: Path, tmp_path: Path
) -> None:
    small_tmp, out = mount_tmpfs("10m"), tmp_path / "out"
    result = run_export_cli(*export_args(bvlc_weights, out), env={"TMPDIR": str(small_tmp)})
    assert_one_error(result, 2, f"{small_tmp}: no space left on device writing temporary files", "TMPDIR")
    assert left_in(small_tmp) == [], f"left in $TMPDIR: {left_in(small_tmp)}"
    assert not out.exists()


def test_a_read_only_out_is_refused_before_the_export(
    run_export_cli, mount_tmpfs, reference_checkpoint: Path, tmp_path: Path
) -> None:
    read_only, tmp = mount_tmpfs("1m", "ro"), _private_tmp(tmp_path)
    result = run_export_cli(*export_args(reference_checkpoint, read_only / "out"), env={"TMPDIR": str(tmp)})
    assert_one_error(result, 2, f"{read_only / 'out'}: --out is not writable", "Read-only", only_line=True)
    assert left_in(read_only) == [] and left_in(tmp) == []
