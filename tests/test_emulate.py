"""`python -m benchmarks emulate`: the cached aarch64 environment and each failure as one line, exit 2.

The real emulated run of a bundle is in test_bundle.py (it shares the bundle fixture there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.emulate import ARM_CPUS, cpuinfo_text, parse_cpus
from benchmarks.emulation_env import NOT_BUILT, EmulationEnv, in_namespace_script, runtime_pins
from edge_runtime import hostinfo, metrics
from export.errors import ToolkitError

PROJECT = Path(__file__).resolve().parents[1]


def emulate_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "emulate", *(str(a) for a in args)],
        cwd=PROJECT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


def fake_env(cache: Path) -> EmulationEnv:
    """A cache entry with READY.json over two small files: enough to check verification, not to run."""
    env = EmulationEnv(cache, runtime_pins())
    (env.rootfs / "usr/bin").mkdir(parents=True)
    (env.rootfs / "usr/bin/python3.11").write_bytes(b"python")
    (env.rootfs / "lib.so").write_bytes(b"runtime")
    hashes = {name: metrics.file_sha256(env.rootfs / name) for name in ("usr/bin/python3.11", "lib.so")}
    env.marker.write_text(json.dumps({"key": env.key, "sha256": hashes}))
    return env


def test_a_verified_cache_is_ready_and_each_kind_of_damage_is_named(tmp_path: Path) -> None:
    assert EmulationEnv(tmp_path / "empty", runtime_pins()).problem() == NOT_BUILT
    env = fake_env(tmp_path / "cache")
    assert env.problem() is None
    (env.rootfs / "lib.so").write_bytes(b"runtimE")
    assert "lib.so changed" in env.problem()
    (env.rootfs / "lib.so").unlink()
    assert "lib.so is missing" in env.problem()
    env.marker.write_text("{")
    assert "unreadable" in env.problem()
    env.marker.unlink()
    assert "incomplete" in env.problem()
    other = EmulationEnv(tmp_path / "cache", {**runtime_pins(), "onnxruntime": "0.0.1"})
    assert other.key != env.key and other.problem() == NOT_BUILT  # new runtime pins: a new environment


def test_a_damaged_cache_is_refused_until_rebuilt(tmp_path: Path) -> None:
    env = fake_env(tmp_path / "cache")
    (env.rootfs / "lib.so").write_bytes(b"truncated")
    done = emulate_cli("--setup", "--cache", tmp_path / "cache")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "damaged (lib.so changed" in done.stderr and "--rebuild" in done.stderr


def test_cpu_models_and_their_cpuinfo() -> None:
    assert parse_cpus("cortex-a72,neoverse-n1,cortex-a72") == ["cortex-a72", "neoverse-n1"]
    with pytest.raises(Exception, match="unknown CPU 'pentium'"):
        parse_cpus("neoverse-n1,pentium")
    text = cpuinfo_text(ARM_CPUS["neoverse-n1"], cores=2)
    assert text.count("processor\t:") == 2 and "asimddp" in text and "0xd0c" in text
    assert "asimddp" not in cpuinfo_text(ARM_CPUS["cortex-a72"], cores=1)  # a Pi 4 has no dot product
    assert hostinfo._cpu_name(text) == "Neoverse-N1"


def test_the_namespace_script_fakes_only_what_the_runtimes_read(tmp_path: Path) -> None:
    script = in_namespace_script(tmp_path, ["/opt/venv/bin/python", "run.py"], {"/mnt/b": Path("/x y")}, None, 2)
    assert "echo 0-1 >" in script and "/sys/devices/system/cpu/online" in script
    assert "proc/cpuinfo" not in script  # no fake cpuinfo asked for
    assert script.splitlines()[-1].startswith("exec chroot") and "'/x y'" in script


def test_aarch64_hwcaps_are_none_off_arm() -> None:
    if hostinfo.platform.machine() == "x86_64":
        assert hostinfo.aarch64_hwcaps() is None


def test_missing_bundle_and_unknown_cpu_are_one_line(tmp_path: Path) -> None:
    done = emulate_cli(tmp_path / "nope.tar.gz")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "bundle not found" in done.stderr
    done = emulate_cli("--cpu", "pentium")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown CPU" in done.stderr
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    fake_env(tmp_path / "cache")  # a ready-looking cache: the bundle is what fails
    done = emulate_cli(junk, "--cache", tmp_path / "cache")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a readable bundle" in done.stderr


def test_without_qemu_it_says_what_to_install(tmp_path: Path) -> None:
    bare_path = str(Path(sys.executable).parent)  # python, but no qemu-aarch64-static, no debootstrap
    done = emulate_cli("--setup", "--cache", tmp_path, env={"PATH": bare_path})
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    expected = "needs root" if os.geteuid() != 0 else "qemu-aarch64-static not found: apt-get install"
    assert expected in done.stderr


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_not_root_is_one_line(tmp_path: Path) -> None:
    command = [*NOBODY, sys.executable, "-c", "import benchmarks.emulate"]
    probe = subprocess.run(command, cwd=PROJECT, capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"an unprivileged user cannot run this interpreter here: {probe.stderr.decode()[-200:]}")
    tmp_path.chmod(0o777)
    done = subprocess.run(
        [*NOBODY, sys.executable, "-m", "benchmarks", "emulate", "--setup", "--cache", str(tmp_path)],
        cwd=PROJECT, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: emulate needs root (debootstrap, chroot and mounts in a private namespace)"


def _host_can_emulate() -> str | None:
    try:
        from benchmarks.emulation_env import require_host_tools

        require_host_tools()
    except ToolkitError as exc:
        return str(exc)
    return None


@pytest.mark.skipif(_host_can_emulate() is not None, reason=f"host cannot emulate aarch64: {_host_can_emulate()}")
def test_no_network_for_the_first_setup_is_one_line_and_leaves_no_cache(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port on this machine that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = emulate_cli("--setup", "--cache", tmp_path, "--mirror", f"http://127.0.0.1:{port}/debian")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot reach the Debian mirror" in done.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no environment, no staging folder


@pytest.mark.skipif(_host_can_emulate() is not None, reason=f"host cannot emulate aarch64: {_host_can_emulate()}")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_setup_leaves_nothing_taken_for_good(tmp_path: Path, signum: int) -> None:
    """A mirror that accepts and never answers holds the setup inside its staging folder; a signal then."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks", "emulate", "--setup", "--cache", str(tmp_path),
             "--mirror", f"http://127.0.0.1:{port}/debian"],
            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".*.partial-*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(tmp_path.glob(".*.partial-*")), "the setup never started staging"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == (130 if signum == signal.SIGINT else 143), stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
