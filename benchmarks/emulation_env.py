"""The cached aarch64 environment that `python -m benchmarks emulate` runs bundles in.

A Debian bookworm arm64 root filesystem (debootstrap, minbase: Python 3.11, the version the project's wheels
are built for) with `/opt/venv` holding numpy, onnxruntime and ai-edge-litert at the versions installed on
this host, so the ARM figures differ from the host's only by the kernels. Built once (5-8 min, needs the
Debian mirror and PyPI), in a staging folder renamed into place only after a smoke test, so an interrupted
setup leaves nothing that is later taken for good; `READY.json` records the sha256 of the files that matter
and is checked before every reuse.

Runs use a private mount namespace (`unshare --mount`): /proc, a fake /proc/cpuinfo and /sys/devices/system/cpu
exist only for that process tree and vanish with it. Why the fakes (QEMU 7.2): with the host's /sys visible,
`import onnxruntime` crashes reading the x86 cache topology; with no /sys, LiteRT silently runs without XNNPACK.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge_runtime.metrics import file_sha256
from export import ui
from export.errors import ToolkitError

SUITE = "bookworm"  # Python 3.11, like the project's pinned runtimes' cp311 wheels
RECIPE_VERSION = 1  # bump when the build steps change: older caches are then rebuilt
RUNTIMES = ("numpy", "onnxruntime", "ai-edge-litert")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
HASHED = ("usr/bin/python3.11", "opt/venv/pyvenv.cfg")  # plus each runtime's native libraries, found at build
QEMU = "qemu-aarch64-static"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
CACHE_ENV = "GOOGLENET_EDGE_CACHE"
NOT_BUILT = "not built yet"
PRIVATE_MOUNTS = ("unshare", "--mount", "--propagation", "private")  # mounts live and die with the process
HOST_PACKAGES = "apt-get install -y qemu-user-static binfmt-support debootstrap"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "googlenet-edge"


def runtime_pins() -> dict[str, str]:
    """The host's numpy and runtime versions: the emulated device runs the same ones."""
    pins = {}
    for name in RUNTIMES:
        try:
            pins[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ToolkitError(f"{name} is not installed on this host; pip install -e . first") from None
    return pins


def apt_mirror() -> str:
    """The Debian mirror apt on this machine uses (debootstrap must reach the same registry)."""
    sources = [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                url = next((w for w in words[1:] if w.startswith("http")), None)
                if url and url.rstrip("/").endswith("/debian"):
                    return url.rstrip("/")
    return "http://deb.debian.org/debian"


@dataclass(frozen=True)
class EmulationEnv:
    cache_dir: Path
    pins: dict[str, str]

    @property
    def key(self) -> str:
        short = {"numpy": "np", "onnxruntime": "ort", "ai-edge-litert": "litert"}
        versions = "-".join(f"{short.get(name, name)}{version}" for name, version in sorted(self.pins.items()))
        return f"aarch64-{SUITE}-{versions}-r{RECIPE_VERSION}"

    @property
    def path(self) -> Path:
        return self.cache_dir / self.key

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def marker(self) -> Path:
        return self.path / "READY.json"

    def process_env(self) -> dict[str, str]:
        """A plain environment for the chroot: nothing of this host's Python leaks in."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

    def qemu_version(self) -> str:
        done = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False)
        first = (done.stdout.splitlines() or ["qemu-aarch64"])[0]
        return first.replace("version ", "").split(" (")[0]

    # ------------------------------------------------------------ checks

    def problem(self) -> str | None:
        """Why the cached environment cannot be used as it is (None when it is ready)."""
        if not self.marker.is_file():
            return NOT_BUILT if not self.path.exists() else "incomplete (no READY.json)"
        try:
            ready = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "READY.json is unreadable"
        if ready.get("key") != self.key:
            return f"built for {ready.get('key')!r}"
        for name, digest in sorted(ready.get("sha256", {}).items()):
            path = self.rootfs / name
            if not path.is_file():
                return f"{name} is missing"
            if file_sha256(path) != digest:
                return f"{name} changed since it was built"
        return None

    # ------------------------------------------------------------ setup

    def setup(self, rebuild: bool = False, mirror: str | None = None) -> bool:
        """Build the environment unless a verified one is cached; True when it was built now."""
        require_host_tools()
        problem = self.problem()
        if problem is None and not rebuild:
            return False
        if problem not in (None, NOT_BUILT) and not rebuild:
            raise ToolkitError(f"damaged ({problem}); run again with --rebuild", self.path)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.cache_dir / ".lock"):
            if not rebuild and self.problem() is None:  # another process built it meanwhile
                return False
            for stale in [*self.cache_dir.glob(f".{self.key}.partial-*"), *self.cache_dir.glob(f".{self.key}.old-*")]:
                shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted setup: never used
            staging = self.cache_dir / f".{self.key}.partial-{os.getpid()}"
            try:
                self._build(staging, mirror or apt_mirror())
                if self.path.exists():
                    old = self.cache_dir / f".{self.key}.old-{os.getpid()}"
                    os.replace(self.path, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(staging, self.path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return True

    def _build(self, staging: Path, mirror: str) -> None:
        started = time.monotonic()
        rootfs = staging / "rootfs"
        staging.mkdir(parents=True)
        check_reachable(f"{mirror}/dists/{SUITE}/Release", "the Debian mirror")
        ui.step(f"debootstrap {SUITE} arm64 from {mirror} (first setup: 5-8 min, ~120 MB download)")
        _run(
            [*PRIVATE_MOUNTS, "debootstrap", "--arch=arm64", "--variant=minbase",
             "--include=python3,python3-venv,ca-certificates", SUITE, str(rootfs), mirror],
            self.cache_dir / "setup-debootstrap.log", "debootstrap",
        )  # fmt: skip
        wheels = rootfs / "opt" / "wheels"
        ui.step(f"downloading aarch64 wheels: {', '.join(f'{k}=={v}' for k, v in self.pins.items())}")
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        _run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
             *platforms, "--python-version", "311", "--implementation", "cp", "--abi", "cp311", "-d", str(wheels),
             *(f"{k}=={v}" for k, v in self.pins.items())],
            self.cache_dir / "setup-pip-download.log", "pip download (PyPI)",
        )  # fmt: skip
        ui.step("creating /opt/venv inside the aarch64 root (emulated pip install, ~40 s)")
        install = [
            "/usr/bin/python3 -m venv /opt/venv",
            "/opt/venv/bin/pip install --quiet --disable-pip-version-check --no-index --find-links /opt/wheels "
            + " ".join(shlex.quote(f"{k}=={v}") for k, v in self.pins.items()),
        ]
        script = in_namespace_script(rootfs, ["sh", "-ec", " && ".join(install)], binds={}, cpuinfo=None, cores=1)
        _run([*PRIVATE_MOUNTS, "sh", "-ec", script], self.cache_dir / "setup-venv.log", "venv")
        shutil.rmtree(wheels)
        for cache in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            cache.unlink()
        ui.step("smoke test: import both runtimes under the emulator")
        probe = "import platform, numpy, onnxruntime, ai_edge_litert.interpreter; print(platform.machine())"
        script = in_namespace_script(rootfs, ["/opt/venv/bin/python", "-c", probe], binds={}, cpuinfo=None, cores=1)
        done = subprocess.run(
            [*PRIVATE_MOUNTS, "sh", "-ec", script],
            capture_output=True, text=True, env={**self.process_env(), "QEMU_CPU": "cortex-a72"}, check=False,
        )  # fmt: skip
        if done.returncode != 0 or done.stdout.strip() != "aarch64":
            tail = (done.stderr.strip().splitlines() or [done.stdout.strip() or "no output"])[-1]
            raise ToolkitError(f"the new aarch64 environment does not run the runtimes ({tail[:200]})")
        hashed = list(HASHED) + [
            p.relative_to(rootfs).as_posix()
            for p in sorted((rootfs / "opt/venv/lib").rglob("*.so"))
            if p.parent.name in ("capi", "interpreter_wrapper") or p.name.startswith("_pywrap")
        ]
        ready = {
            "key": self.key,
            "suite": SUITE,
            "mirror": mirror,
            "runtimes": self.pins,
            "qemu": self.qemu_version(),
            "build_seconds": round(time.monotonic() - started, 1),
            "sha256": {name: file_sha256(rootfs / name) for name in hashed},
        }
        (staging / "READY.json").write_text(json.dumps(ready, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def in_namespace_script(rootfs: Path, argv: list[str], binds: dict[str, Path], cpuinfo: Path | None, cores: int) -> str:
    """A shell script for `unshare --mount` that mounts what the emulated runtimes need, then chroots.

    /proc (numpy and pip read it), optionally a fake /proc/cpuinfo of the emulated CPU, a tmpfs /sys with
    just the CPU topology files (see the module docstring), and read-write bind mounts `binds` (inside -> host).
    """
    root = shlex.quote(str(rootfs))
    cpu_dir = f"{root}/sys/devices/system/cpu"
    lines = [f"mount -t proc proc {root}/proc"]
    if cpuinfo is not None:
        lines.append(f"mount --bind {shlex.quote(str(cpuinfo))} {root}/proc/cpuinfo")
    lines += [f"mount -t tmpfs -o size=1m sysfs-stub {root}/sys", f"mkdir -p {cpu_dir}"]
    lines += [f"echo 0-{max(cores, 1) - 1} > {cpu_dir}/{name}" for name in ("possible", "present", "online")]
    lines.append(f"echo 255 > {cpu_dir}/kernel_max")
    for inside, host in binds.items():
        target = f"{root}/{inside.lstrip('/')}"
        lines += [f"mkdir -p {shlex.quote(target)}", f"mount --bind {shlex.quote(str(host))} {shlex.quote(target)}"]
    lines.append(f"exec chroot {root} {' '.join(shlex.quote(a) for a in argv)}")
    return "\n".join(lines)


def require_host_tools() -> None:
    """Root, QEMU, debootstrap and a binfmt_misc entry for aarch64 (registered here when it is missing)."""
    if os.geteuid() != 0:
        raise ToolkitError("emulate needs root (debootstrap, chroot and mounts in a private namespace)")
    for tool in (QEMU, "debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            raise ToolkitError(f"{tool} not found: {HOST_PACKAGES}")
    entry = BINFMT / "qemu-aarch64"
    if not entry.is_file():
        if not (BINFMT / "register").exists():
            done = subprocess.run(
                ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                why = (done.stderr.strip() or "mount failed").splitlines()[-1]
                raise ToolkitError(f"binfmt_misc is not available ({why}); aarch64 programs cannot run here")
        if shutil.which("update-binfmts"):
            subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False)
    if not entry.is_file():
        raise ToolkitError(f"no binfmt_misc entry for qemu-aarch64 in {BINFMT}: {HOST_PACKAGES}")
    text = entry.read_text(encoding="utf-8", errors="replace")
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    if not text.startswith("enabled") or "F" not in flags:
        raise ToolkitError(f"{entry}: must be enabled with flag F (update-binfmts --enable qemu-aarch64)")


def check_reachable(url: str, what: str) -> None:
    """One line instead of a long failure deep inside debootstrap when the machine is offline."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ToolkitError(
            f"cannot reach {what} at {url} ({reason}): the first setup downloads Debian arm64 packages and wheels"
        ) from None


def _run(command: list[str], log: Path, what: str) -> None:
    """Run a setup step into its log; on any exit of ours (an error, Ctrl-C, SIGTERM) its process group dies
    too, so nothing keeps writing into the staging folder being removed."""
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if code != 0:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit code {code}"
        raise ToolkitError(f"{what} failed: {last[:240]} (log: {log})")


class _locked:
    """An exclusive lock on a file: two setups never build into the same cache at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.handle = open(self.path, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
