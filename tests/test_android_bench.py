"""benchmarks/android_bench.py: the benchmark_model parser on real recorded outputs, the adb runner on a fake phone.

The parser tests read outputs of the real tool copied from public reports (tests/data/benchmark_model/, each
file names its source). No phone exists here, so the runner tests put a fake `adb` executable first on PATH:
it answers like a connected phone and prints a recorded real benchmark_model output for every run.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bundle import ANDROID_BESIDE_RUN
from edge_runtime import android_bench, benchmark_model_output
from edge_runtime.android_bench import NO_ADB, guess_precision
from edge_runtime.benchmark_model_output import NO_TIMINGS, parse_benchmark_model

DATA = Path(__file__).parent / "data" / "benchmark_model"
SCRIPT = Path(android_bench.__file__)


def recorded(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------- the parser, on real outputs


def test_android_adb_output_2020_with_op_profiling():
    """OnePlus 5 over adb: the second count= line is the measured run; op-profiling tables are ignored."""
    result = parse_benchmark_model(recorded("tf_issue_42507_android_adb_2020.txt"))
    assert result["threads"] == 4
    assert result["load_ms"] == pytest.approx(0.855)
    assert result["first_inference_ms"] == pytest.approx(49.06)
    assert result["warmup_mean_ms"] == pytest.approx(34.8251)
    assert result["warmup_runs"] == 15
    assert result["latency_ms"] == {
        "4": {
            "mean": pytest.approx(33.2094),
            "std": pytest.approx(0.45),
            "min": pytest.approx(32.641),
            "max": pytest.approx(34.005),
            "median": None,
            "p90": None,
            "p99": None,
            "p5": None,
            "p95": None,
            "runs": 50,
        }
    }
    # the 2020 name of the footprint delta line; no periodic peak, so the overall delta stands in
    assert result["memory"]["reported_as"] == "Peak memory footprint (MB)"
    assert result["memory"]["init_footprint_delta_mb"] == 0.0
    assert result["memory"]["overall_footprint_delta_mb"] == pytest.approx(12.8672)
    assert result["memory"]["overall_peak_mb"] is None
    assert result["peak_rss_mb"] == pytest.approx(12.8672)
    assert result["graph"] == "/data/local/tmp/espcn_harmonic_2x_slim_w_cl.tflite"
    assert result["model_file_size_mb"] == pytest.approx(0.004448)
    assert result["benchmark_model"] == {"version": None}  # the tool prints no version


def test_logcat_of_the_benchmark_app_two_runs_last_counts():
    """`I tflite  :` logcat lines with percentiles (p5/median/p95); of two runs the last one is reported."""
    result = parse_benchmark_model(recorded("logcat_tflite_android_apk_2026.txt"))
    assert result["graph"] == "/data/local/tmp/ssd_mobilenetv3_large_fp16.tflite"
    assert result["load_ms"] == pytest.approx(58.312)
    assert result["first_inference_ms"] == pytest.approx(70.225)
    assert result["warmup_mean_ms"] == pytest.approx(57.2372)
    entry = result["latency_ms"]["4"]
    assert entry["mean"] == pytest.approx(52.97)
    assert entry["std"] == pytest.approx(3.114)
    assert (entry["min"], entry["max"]) == (pytest.approx(45.884), pytest.approx(62.002))
    assert entry["median"] == pytest.approx(53.524)
    assert (entry["p5"], entry["p95"]) == (pytest.approx(46.034), pytest.approx(55.365))
    assert (entry["p90"], entry["p99"], entry["runs"]) == (None, None, 25)
    assert result["memory"]["init_footprint_delta_mb"] == pytest.approx(34.8633)
    assert result["peak_rss_mb"] == pytest.approx(48.7305)


def test_logcat_first_run_alone():
    lines = recorded("logcat_tflite_android_apk_2026.txt").splitlines()
    second = next(i for i, line in enumerate(lines) if "23002" in line)
    result = parse_benchmark_model("\n".join(lines[:second]))
    assert result["graph"] == "/data/local/tmp/best_int8.tflite"
    entry = result["latency_ms"]["4"]
    assert (entry["mean"], entry["median"], entry["runs"]) == (pytest.approx(145.528), pytest.approx(141.253), 25)
    assert result["first_inference_ms"] == pytest.approx(235.158)
    assert result["peak_rss_mb"] == pytest.approx(73.4102)


def test_info_prefixed_2024_output_cut_before_the_memory_lines():
    """`INFO: ` prefixes; threads not set so not printed ("default"); missing memory lines are null."""
    result = parse_benchmark_model(recorded("tf_issue_73862_linux_2024_info_prefix.txt"))
    assert result["threads"] is None
    assert list(result["latency_ms"]) == ["default"]
    assert result["latency_ms"]["default"]["mean"] == pytest.approx(13.5202)
    assert result["latency_ms"]["default"]["runs"] == 74
    assert result["warmup_runs"] == 37
    assert result["first_inference_ms"] == pytest.approx(14.744)
    assert result["load_ms"] == pytest.approx(12.75)
    assert result["peak_rss_mb"] is None
    assert set(result["memory"].values()) == {None}


def test_threads_argument_names_the_latency_entry():
    result = parse_benchmark_model(recorded("tf_issue_73862_linux_2024_info_prefix.txt"), threads=2)
    assert list(result["latency_ms"]) == ["2"]
    assert result["threads"] == 2
    printed = parse_benchmark_model(recorded("tf_issue_42507_android_adb_2020.txt"), threads=1)
    assert list(printed["latency_ms"]) == ["1"]
    assert printed["threads"] == 4  # what the tool printed it used


def test_oldest_summary_format_and_a_truncated_second_run():
    """2019 arm64 output: "Average inference timings ... no stats:", no "First inference" (taken from the
    warm-up line's first=); the complete run wins over the next one, cut inside its measured line."""
    result = parse_benchmark_model(recorded("yuenshome_issue_77_android_arm64_2019.txt"))
    assert result["load_ms"] == pytest.approx(9.933)
    assert result["first_inference_ms"] == pytest.approx(127.425)
    assert result["warmup_mean_ms"] == pytest.approx(76.6059)
    entry = result["latency_ms"]["default"]
    assert (entry["mean"], entry["std"], entry["runs"]) == (pytest.approx(66.7676), pytest.approx(0.039), 15)
    assert result["peak_rss_mb"] is None


def test_trimmed_three_line_output():
    """Only the measured count= line, the summary and the memory line (no headers, no thread line)."""
    result = parse_benchmark_model(recorded("lp6m_yolov5s_android_mi11_cpu.txt"))
    entry = result["latency_ms"]["default"]
    assert (entry["mean"], entry["min"], entry["max"], entry["runs"]) == (220.0, 206.675, 231.957, 50)
    assert result["warmup_runs"] is None
    assert result["first_inference_ms"] == pytest.approx(247.583)
    assert result["warmup_mean_ms"] == pytest.approx(222.136)
    assert result["load_ms"] == pytest.approx(1.43)
    assert result["peak_rss_mb"] == pytest.approx(140.508)


def test_failed_run_has_no_timing_lines():
    with pytest.raises(ValueError, match=f"^{NO_TIMINGS}$"):
        parse_benchmark_model(recorded("lp6m_yolov5s_android_mi11_nnapi_failed.txt"))


@pytest.mark.parametrize("text", ["", "hello\nworld", "Timings (microseconds): count=50 first=1 curr=2"])
def test_garbage_raises(text):
    with pytest.raises(ValueError, match=f"^{NO_TIMINGS}$"):
        parse_benchmark_model(text)


def test_peak_memory_lines_of_a_recent_build():
    """The periodic-monitoring peak and the end-of-run RSS lines (a real tail without timing lines)."""
    text = recorded("peak_memory_tail_tf2_11.txt")
    with pytest.raises(ValueError, match=NO_TIMINGS):
        parse_benchmark_model(text)
    messages = [benchmark_model_output._message(line) for line in text.splitlines()]
    assert benchmark_model_output._memory(messages) == {
        "reported_as": "Memory footprint delta from the start of the tool (MB)",
        "init_footprint_delta_mb": pytest.approx(2.43359),
        "overall_footprint_delta_mb": pytest.approx(8.67578),
        "overall_peak_mb": pytest.approx(13.1797),
        "end_vm_rss_mb": 13.0,
        "end_rss_anon_mb": 7.0,
        "end_rss_file_shmem_mb": 6.0,
    }


def test_peak_memory_line_wins_over_the_delta():
    """With --report_peak_memory_footprint the monitored peak is peak_rss_mb (the delta stays in memory)."""
    own = recorded("lp6m_yolov5s_android_mi11_cpu.txt")
    tail = [line for line in recorded("peak_memory_tail_tf2_11.txt").splitlines() if not line.startswith("#")]
    result = parse_benchmark_model(own + "\n".join(tail[1:]))  # tail[0] is that run's own delta line
    assert result["peak_rss_mb"] == pytest.approx(13.1797)
    assert result["memory"]["overall_footprint_delta_mb"] == pytest.approx(140.508)


def test_partial_output_never_crashes():
    """Every prefix of a real output either parses or raises the one ValueError."""
    lines = recorded("tf_issue_42507_android_adb_2020.txt").splitlines()
    outcomes = []
    for end in range(len(lines) + 1):
        try:
            outcomes.append(parse_benchmark_model("\n".join(lines[:end]))["latency_ms"])
        except ValueError as exc:
            assert str(exc) == NO_TIMINGS
            outcomes.append(None)
    # cut after the warm-up line: no measured run yet, so no latency; cut after the measured line: latency
    warmup_only = next(i for i, line in enumerate(lines) if line.startswith("count=15")) + 1
    assert outcomes[warmup_only] == {}
    assert outcomes[-1]["4"]["runs"] == 50


@pytest.mark.parametrize(
    ("name", "precision"),
    [
        ("googlenet.tflite", "fp32"),
        ("googlenet.int8.tflite", "int8"),
        ("googlenet.fp16.tflite", "fp16"),
        ("googlenet.dynamic.tflite", "dynamic"),
        ("googlenet_float16.tflite", "fp16"),
    ],
)
def test_guess_precision(name, precision):
    assert guess_precision(name) == precision


def test_standalone_stdlib_and_python39_syntax():
    """Shipped in the tarball's android/ folder with the modules it imports: standard library only, no other
    repository import, Python 3.9 grammar."""
    shipped = {Path(name).stem for name in ANDROID_BESIDE_RUN}
    for path in (SCRIPT, *(SCRIPT.parent / name for name in ANDROID_BESIDE_RUN)):
        tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0
                imported.add(node.module or "")
        imported -= shipped | {f"edge_runtime.{name}" for name in shipped}
        roots = {name.split(".")[0] for name in imported}
        assert roots <= set(sys.stdlib_module_names) | {"__future__"}, (path.name, roots - set(sys.stdlib_module_names))


# ---------------------------------------------------------------- the runner, on a fake phone

FAKE_ADB = r'''#!{python}
"""A fake `adb`: answers like one connected phone and logs every call (a test double, no device here)."""
import json, os, sys

args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(args) + "\n")
if args[:1] == ["-s"]:
    args = args[2:]
state = os.environ.get("FAKE_ADB_STATE", "device")
if args == ["get-state"]:
    if state != "device":
        print(f"error: device {{state}}", file=sys.stderr)
        sys.exit(1)
    print("device")
elif args[:1] == ["push"]:
    if not os.path.isfile(args[1]):
        print(f"adb: error: cannot stat '{{args[1]}}': No such file or directory", file=sys.stderr)
        sys.exit(1)
    print(f"{{args[1]}}: 1 file pushed, 0 skipped.")
elif args[:1] == ["shell"]:
    command = " ".join(args[1:])
    if command == "getprop":
        print("[ro.build.version.release]: [14]\n[ro.build.version.sdk]: [34]\n[ro.product.model]: [Pixel 7]")
        print("[ro.product.manufacturer]: [Google]\n[ro.soc.model]: [GS201]\n[ro.board.platform]: [gs201]")
        print("[ro.product.cpu.abi]: [arm64-v8a]")
    elif command == "cat /proc/cpuinfo":
        for n in range(8):
            print(f"processor\t: {{n}}\nBogoMIPS\t: 49.15\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 "
                  "atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd05\n")
    elif command.startswith("test -x"):
        if os.environ.get("FAKE_ADB_HAS_BINARY"):
            print("present")
    elif "benchmark_model" in command and "--graph=" in command:
        threads = command.split("--num_threads=")[1].split()[0]
        if threads in os.environ.get("FAKE_ADB_FAIL_THREADS", "").split(","):
            sys.stdout.write(open(os.environ["FAKE_ADB_FAILED_OUTPUT"], encoding="utf-8").read())
            sys.exit(1)
        sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"], encoding="utf-8").read())
else:
    print(f"fake adb: unexpected {{args}}", file=sys.stderr)
    sys.exit(1)
'''


class FakePhone:
    """The fake adb's folder (put first on PATH), its call log and the models folder for one test."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        adb = self.bin / "adb"
        adb.write_text(FAKE_ADB.format(python=sys.executable), encoding="utf-8")
        adb.chmod(0o755)
        self.log = root / "adb-calls.jsonl"
        self.models = root / "models"
        self.models.mkdir()
        (self.models / "googlenet.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 1000)
        (self.models / "googlenet.int8.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 300)
        (self.models / "googlenet.int8.tflite.json").write_text(json.dumps({"precision": "int8"}), encoding="utf-8")
        (self.models / "notes.txt").write_text("not a model", encoding="utf-8")
        (root / "downloads").mkdir()  # not in --models nor the working folder: found only through --binary
        self.binary = root / "downloads" / "android_aarch64_benchmark_model"
        self.binary.write_bytes(b"\x7fELF fake binary")
        self.out = root / "results.json"
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_ADB_LOG", str(self.log))
        monkeypatch.setenv("FAKE_ADB_OUTPUT", str(DATA / "tf_issue_42507_android_adb_2020.txt"))
        monkeypatch.setenv("FAKE_ADB_FAILED_OUTPUT", str(DATA / "lp6m_yolov5s_android_mi11_nnapi_failed.txt"))
        monkeypatch.chdir(root)

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def args(self, *extra: str) -> list[str]:
        return ["--models", str(self.models), "--binary", str(self.binary), "--out", str(self.out), *extra]


@pytest.fixture
def phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePhone:
    return FakePhone(tmp_path, monkeypatch)


def test_runner_pushes_runs_and_writes_the_report(phone: FakePhone, capsys: pytest.CaptureFixture[str]):
    code = android_bench.main(phone.args("--threads", "1,2", "--runs", "30", "--warmup", "3", "--serial", "ABC"))
    assert code == 0
    report = json.loads(phone.out.read_text(encoding="utf-8"))
    assert report["schema_version"] == 1
    host = report["host"]
    assert (host["device"], host["cpu"], host["system"], host["cores"]) == ("Pixel 7", "GS201", "Android 14", 8)
    assert host["isa"] == ["dotprod", "neon"]
    assert host["machine"] == "arm64-v8a"
    runtime = host["runtimes"]["benchmark_model"]
    assert runtime["binary"] == "android_aarch64_benchmark_model"
    assert runtime["version"] is None and len(runtime["sha256"]) == 64
    assert report["settings"]["threads"] == [1, 2]

    int8, fp32 = report["artifacts"]  # sorted by file name
    assert (int8["name"], int8["precision"], fp32["name"], fp32["precision"]) == (
        "googlenet.int8.tflite",
        "int8",  # from the sidecar
        "googlenet.tflite",
        "fp32",  # from the name
    )
    assert fp32["size_bytes"] == 1008 and fp32["format"] == "tflite" and fp32["device"] == "Pixel 7"
    assert fp32["path"] == str(phone.models / "googlenet.tflite")
    assert set(fp32["latency_ms"]) == {"1", "2"}
    assert fp32["latency_ms"]["1"]["mean"] == pytest.approx(33.2094)
    assert fp32["latency_ms"]["2"]["runs"] == 50  # what the output says ran, not what was asked
    assert fp32["load_ms"] == pytest.approx(0.855)
    assert fp32["first_inference_ms"] == pytest.approx(49.06)
    assert fp32["throughput"] == {"threads": 1, "images_per_s": pytest.approx(1000 / 33.2094, abs=1e-3)}
    assert fp32["peak_rss_mb"] == pytest.approx(12.8672)
    assert fp32["accuracy"] is None
    assert "errors" not in fp32
    from benchmarks.report import validate_report

    validate_report(report)  # the host's report schema, so `benchmarks merge` takes it

    calls = phone.calls()
    assert all(call[:2] == ["-s", "ABC"] for call in calls)
    pushes = [call[3:] for call in calls if call[2] == "push"]
    assert pushes[0] == [str(phone.binary), "/data/local/tmp/benchmark_model"]
    assert sorted(p[1] for p in pushes[1:]) == [
        "/data/local/tmp/googlenet.int8.tflite",
        "/data/local/tmp/googlenet.tflite",
    ]
    runs = [call[3] for call in calls if call[2] == "shell" and "--graph=" in call[3]]
    assert runs[0] == (
        "/data/local/tmp/benchmark_model --graph=/data/local/tmp/googlenet.int8.tflite "
        "--num_threads=1 --num_runs=30 --warmup_runs=3"
    )
    assert len(runs) == 4 and sum("--num_threads=2" in run for run in runs) == 2
    assert ["-s", "ABC", "shell", "chmod 755 /data/local/tmp/benchmark_model"] in calls
    assert calls[-1][2:] == ["shell", "rm -f /data/local/tmp/googlenet.int8.tflite /data/local/tmp/googlenet.tflite"]

    captured = capsys.readouterr()
    # the recorded output is a 4-thread run: the runner says so instead of trusting the flag silently
    assert "googlenet.tflite: asked for 1 thread(s), benchmark_model says 4" in captured.err
    assert fp32["benchmark_model_runs"]["1"]["threads"] == 4
    table = captured.out
    assert "Pixel 7 (GS201, 8 cores, Android 14)" in table
    assert "googlenet.int8.tflite" in table and "33.21" in table
    assert f"wrote {phone.out}" in table


def test_runner_keeps_going_when_one_thread_count_fails(phone: FakePhone, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ADB_FAIL_THREADS", "2")
    assert android_bench.main(phone.args("--threads", "1,2")) == 0
    artifact = json.loads(phone.out.read_text(encoding="utf-8"))["artifacts"][0]
    assert list(artifact["latency_ms"]) == ["1"]
    assert artifact["errors"] == {"2": "Benchmarking failed."}
    assert artifact["throughput"]["threads"] == 1
    captured = capsys.readouterr()
    assert "googlenet.int8.tflite with 2 thread(s) failed: Benchmarking failed." in captured.out
    assert "warning:" in captured.err


def test_runner_exit_1_when_nothing_was_measured(phone: FakePhone, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_FAIL_THREADS", "1")
    assert android_bench.main(phone.args("--threads", "1")) == 1
    report = json.loads(phone.out.read_text(encoding="utf-8"))
    assert all(a["latency_ms"] == {} and a["throughput"] is None for a in report["artifacts"])


def test_default_out_is_named_after_the_device(phone: FakePhone):
    assert android_bench.main(["--models", str(phone.models), "--binary", str(phone.binary), "--threads", "4"]) == 0
    assert (phone.models.parent / "results-android-Pixel_7.json").is_file()


def test_binary_already_on_the_phone_is_used_without_a_push(phone: FakePhone, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_HAS_BINARY", "1")
    assert android_bench.main(["--models", str(phone.models), "--out", str(phone.out), "--threads", "1"]) == 0
    pushed = [call[2] for call in phone.calls() if call[0] == "push"]
    assert pushed == ["/data/local/tmp/googlenet.int8.tflite", "/data/local/tmp/googlenet.tflite"]
    assert json.loads(phone.out.read_text(encoding="utf-8"))["host"]["runtimes"]["benchmark_model"]["binary"] is None


def test_no_binary_anywhere_is_one_line_with_the_download_hint(phone: FakePhone, capsys):
    assert android_bench.main(["--models", str(phone.models), "--out", str(phone.out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no benchmark_model binary")
    assert "android_aarch64_benchmark_model" in err and "--binary" in err
    assert not phone.out.exists()


@pytest.mark.parametrize("state", ["unauthorized", "offline"])
def test_no_ready_device_is_one_line(phone: FakePhone, monkeypatch, capsys, state):
    monkeypatch.setenv("FAKE_ADB_STATE", state)
    assert android_bench.main(phone.args()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no Android device ready")
    assert state in err
    assert [call for call in phone.calls() if call[0] != "get-state"] == []  # nothing pushed or run


def test_folder_without_models_is_one_line(phone: FakePhone, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert android_bench.main(["--models", str(empty), "--binary", str(phone.binary)]) == 2
    assert capsys.readouterr().err == f"error: {empty}: no .tflite files (pass --models DIR with the .tflite files)\n"


@pytest.mark.parametrize("bad", [["--threads", "0"], ["--threads", "two"], ["--runs", "0"], ["--warmup", "-1"]])
def test_bad_arguments_are_one_line_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        android_bench.main(bad)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_no_adb_on_path_in_process(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", "")
    monkeypatch.chdir(tmp_path)
    assert android_bench.main([]) == 2
    assert capsys.readouterr().err == f"error: {NO_ADB}\n"


def test_no_adb_on_path_as_a_script(tmp_path):
    """Run as the tarball runs it (its android/ folder alone), with an empty PATH: one line on stderr, exit 2."""
    folder = tmp_path / "android"
    folder.mkdir()
    shutil.copyfile(SCRIPT, folder / "run_android.py")
    for name in ANDROID_BESIDE_RUN:
        shutil.copyfile(SCRIPT.parent / name, folder / name)
    done = subprocess.run(
        [sys.executable, str(folder / "run_android.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": ""},
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: adb not found on PATH: install Android platform-tools and connect a device (adb devices)\n"
    )
    assert done.stdout == ""
