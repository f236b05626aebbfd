"""`quantize.quantize_onnx`: real ONNX Runtime static quantization of the real BVLC GoogLeNet, and its report.

Every model here is quantized from the session's FP32 BVLC export (`bvlc_onnx_export`, conftest) with a few
real ImageNet photos (4-8 calibration images, 8 evaluation images) so the module stays within its time
budget; the full 100/400 acceptance run is in `test_quantize_cli.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import all_cores
from onnx import TensorProto, numpy_helper

from edge_runtime.hostinfo import host_facts, int8_host_caveat
from edge_runtime.kernel_coverage import is_lowered_lrn
from export.errors import ToolkitError
from export.evaluation import EvalSet, accuracy, load_eval_set
from export.onnx_export import OnnxExportResult
from export.weights import LoadedModel
from quantize import (
    ArraySource,
    FolderSource,
    Int8Result,
    IterableSource,
    QuantizationConfig,
    quantize_onnx,
)
from quantize.drift import LAYER_REPORT_IMAGES

pytestmark = pytest.mark.slow

CALIB_SIZE, EVAL_SIZE = 8, 8
FIDELITY_KEYS = {"top1_agreement", "top5_overlap", "kl_mean", "cosine_mean"}


# -- helpers ------------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def files_in(folder: Path) -> list[str]:
    """Every entry of `folder`, hidden ones included."""
    return sorted(p.name for p in folder.iterdir())


class Graph:
    """Just enough of a QDQ graph to say what is quantized and how."""

    def __init__(self, path: Path) -> None:
        self.model = onnx.load(str(path))
        self.inits = {i.name: i for i in self.model.graph.initializer}
        self.producer = {out: node for node in self.model.graph.node for out in node.output}
        self.nodes = {node.name: node for node in self.model.graph.node}

    def ops(self) -> set[str]:
        return {node.op_type for node in self.model.graph.node}

    def weight_dq(self, node_name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear feeding the node's weight, or None when the weight is a float initializer."""
        weight = self.nodes[node_name].input[1]
        producer = self.producer.get(weight)
        return producer if producer is not None and producer.op_type == "DequantizeLinear" else None

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def activation_zero_point_types(self) -> set[int]:
        """Element types of the zero points of every QuantizeLinear (the activations' int8 or uint8)."""
        return {
            self.inits[node.input[2]].data_type for node in self.model.graph.node if node.op_type == "QuantizeLinear"
        }

    def max_abs_int8_weight(self) -> int:
        return max(
            int(np.abs(self.array(node.input[0]).astype(np.int32)).max())
            for node in self.model.graph.node
            if node.op_type == "DequantizeLinear"
            and node.input[0] in self.inits
            and self.inits[node.input[0]].data_type == TensorProto.INT8
        )

    def int8_weights(self) -> dict[str, np.ndarray]:
        """The quantized weight tensors (int8 initializers dequantized as data, not zero points)."""
        return {
            node.input[0]: self.array(node.input[0])
            for node in self.model.graph.node
            if node.op_type == "DequantizeLinear"
            and node.input[0] in self.inits
            and self.inits[node.input[0]].data_type == TensorProto.INT8
            and len(self.inits[node.input[0]].dims) >= 2
        }

    def activation_scales(self) -> dict[str, float]:
        return {
            node.input[1]: float(self.array(node.input[1]))
            for node in self.model.graph.node
            if node.op_type == "QuantizeLinear"
        }


def run_model(path: Path, inputs: np.ndarray, optimize: bool = True) -> np.ndarray:
    """Logits from a plain ONNX Runtime session, one image at a time (the export has batch 1)."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"input": inputs[i : i + 1]})[0] for i in range(len(inputs))])


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_path(bvlc_onnx_export: OnnxExportResult) -> Path:
    return bvlc_onnx_export.path


@pytest.fixture(scope="module")
def calib_source(imagenet_sample_dir: Path, bvlc_loaded: LoadedModel) -> FolderSource:
    return FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=CALIB_SIZE, seed=0)


@pytest.fixture(scope="module")
def eval_set(calib_source: FolderSource, imagenet_sample_dir: Path, bvlc_loaded: LoadedModel) -> EvalSet:
    """8 labelled photos spread over the classes, none of them a calibration image."""
    paths = calib_source.unused[:: len(calib_source.unused) // EVAL_SIZE][:EVAL_SIZE]
    return load_eval_set(paths, imagenet_sample_dir, bvlc_loaded.preprocess, bvlc_loaded.labels)


@pytest.fixture(scope="module")
def with_drift(fp32_path: Path, calib_source, eval_set, tmp_path_factory) -> Int8Result:
    """arm64 int8 model calibrated on 8 photos, with the drift report on 8 others (on this host's kernels too)."""
    out = tmp_path_factory.mktemp("int8_with_drift") / "googlenet.int8.onnx"
    return quantize_onnx(fp32_path, calib_source, QuantizationConfig.arm64(), eval_set, None, out, host_run=True)


@pytest.fixture(scope="module")
def calib_arrays(imagenet_sample_dir: Path, bvlc_loaded: LoadedModel) -> np.ndarray:
    """4 preprocessed calibration photos (the first 4 a 4-image FolderSource picks)."""
    return FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=4, seed=0).arrays()


@pytest.fixture(scope="module")
def twice(fp32_path: Path, imagenet_sample_dir: Path, bvlc_loaded: LoadedModel, tmp_path_factory) -> list[Int8Result]:
    """The same FP32 model quantized twice from scratch with the same 4-photo calibration set, on every core
    (calibration collected in parallel)."""
    results = []
    with all_cores():
        for run in ("first", "second"):
            source = FolderSource(imagenet_sample_dir, bvlc_loaded.preprocess, size=4, seed=0)
            out = tmp_path_factory.mktemp(f"int8_{run}") / "googlenet.int8.onnx"
            results.append(quantize_onnx(fp32_path, source, QuantizationConfig.arm64(), out_path=out))
    return results


EXCLUDED = ("fc", "inception3a.branch4.1.conv")


@pytest.fixture(scope="module")
def excluded(fp32_path: Path, calib_arrays: np.ndarray, tmp_path_factory) -> Int8Result:
    out = tmp_path_factory.mktemp("int8_exclude") / "googlenet.int8.onnx"
    config = QuantizationConfig.arm64(exclude=EXCLUDED)
    return quantize_onnx(fp32_path, ArraySource(calib_arrays), config, out_path=out)


@pytest.fixture(scope="module", params=["x86-avx2", "x86-vnni"])
def x86(request, fp32_path: Path, calib_arrays: np.ndarray, tmp_path_factory) -> tuple[str, Int8Result]:
    """The x86 presets; calibrated through an IterableSource (avx2) and an `.npy` ArraySource (vnni)."""
    target = request.param
    folder = tmp_path_factory.mktemp(f"int8_{target}")
    if target == "x86-avx2":
        source, config = IterableSource(list(calib_arrays), name="four photos"), QuantizationConfig.x86_avx2()
    else:
        np.save(folder / "calib.npy", calib_arrays)
        source = ArraySource(folder / "calib.npy", input_shape=calib_arrays.shape[1:])
        config = QuantizationConfig.x86_vnni()
    return target, quantize_onnx(fp32_path, source, config, out_path=folder / "out" / "googlenet.int8.onnx")


# -- the artifact -----------------------------------------------------------------------------------------
def test_int8_model_and_sidecar_are_written_and_nothing_else(with_drift: Int8Result) -> None:
    assert with_drift.path.name == "googlenet.int8.onnx"
    assert with_drift.sidecar.name == "googlenet.int8.onnx.json"
    assert files_in(with_drift.path.parent) == ["googlenet.int8.onnx", "googlenet.int8.onnx.json"]
    onnx.checker.check_model(str(with_drift.path))
    assert set(with_drift.timings) == {"quantize_s", "drift_s"}


def test_int8_model_is_at_most_26_percent_of_fp32(with_drift: Int8Result, fp32_path: Path) -> None:
    ratio = with_drift.path.stat().st_size / fp32_path.stat().st_size
    assert ratio <= 0.26
    assert with_drift.info["size_ratio"] == pytest.approx(ratio, abs=1e-4)
    assert with_drift.info["size_bytes"] == with_drift.path.stat().st_size
    assert with_drift.info["fp32_size_bytes"] == fp32_path.stat().st_size


def test_int8_graph_is_qdq_with_per_channel_int8_weights(with_drift: Int8Result) -> None:
    graph = Graph(with_drift.path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph.ops()
    # 57 convolutions and the classifier; the lowered LRNs' band convolutions stay float (no integer LRN anywhere)
    convs = [n for n in graph.model.graph.node if n.op_type in ("Conv", "Gemm") and not is_lowered_lrn(n.name)]
    assert len(convs) == 58
    for node in convs:
        dq = graph.weight_dq(node.name)
        assert dq is not None, f"{node.name}'s weight is not quantized"
        weight = graph.inits[dq.input[0]]
        assert weight.data_type == TensorProto.INT8
        scale = graph.array(dq.input[1])
        assert scale.shape == (weight.dims[0],), f"{node.name}: not per-output-channel"
    # arm64: int8 activations, full 8-bit weight range.
    assert graph.activation_zero_point_types() == {TensorProto.INT8}
    assert graph.max_abs_int8_weight() == 127


def test_int8_metadata_props(with_drift: Int8Result, fp32_path: Path, calib_source: FolderSource) -> None:
    meta, fp32_meta = metadata_of(with_drift.path), metadata_of(fp32_path)
    assert meta["precision"] == "int8"
    assert meta["preprocess"] == fp32_meta["preprocess"]
    assert meta["labels"] == fp32_meta["labels"]
    assert len(json.loads(meta["labels"])["names"]) == 1000
    quantization = json.loads(meta["quantization"])
    assert quantization["target"] == "arm64" and quantization["calibration"] == "minmax"
    assert quantization["activation_type"] == "int8" and quantization["reduce_range"] is False
    calibration = json.loads(meta["calibration"])
    assert calibration["images"] == CALIB_SIZE and calibration["kind"] == "folder"
    assert calibration["file_list_sha256"] == calib_source.describe()["file_list_sha256"]
    drift = json.loads(meta["drift"])
    assert drift["images"] == EVAL_SIZE
    assert set(drift["emulated"]) == {"top1_drop_pp", "top1_agreement"}


def test_sidecar_has_the_metadata_plus_size_drift_and_host(with_drift: Int8Result, fp32_path: Path) -> None:
    text = with_drift.sidecar.read_text(encoding="utf-8")
    sidecar = json.loads(text, parse_constant=lambda name: pytest.fail(f"sidecar is not strict JSON: {name}"))
    assert sidecar == json.loads(json.dumps(with_drift.info))
    meta = metadata_of(with_drift.path)
    assert sidecar["precision"] == "int8"
    assert sidecar["preprocess"] == json.loads(meta["preprocess"])
    assert sidecar["labels"] == json.loads(meta["labels"])
    assert sidecar["quantization"] == json.loads(meta["quantization"])
    calibration = {k: v for k, v in sidecar["calibration"].items() if k != "unreadable"}
    assert calibration == json.loads(meta["calibration"])
    assert sidecar["size_ratio"] <= 0.26
    assert sidecar["host"] == json.loads(json.dumps(host_facts()))
    assert sidecar["sha256"] == sha256_of(with_drift.path)
    assert sidecar["fp32_sha256"] == sha256_of(fp32_path) and sidecar["fp32_model"] == fp32_path.name
    assert set(sidecar["drift"]) >= {"fp32", "host", "emulated", "layers", "eval"}


# -- the drift report -------------------------------------------------------------------------------------
def test_drift_report_fields(with_drift: Int8Result) -> None:
    drift = with_drift.info["drift"]
    assert drift["eval"]["images"] == EVAL_SIZE and drift["eval"]["labelled"] == EVAL_SIZE
    fp32_top1 = drift["fp32"]["accuracy"]["top1"]
    for run in ("host", "emulated"):
        report = drift[run]
        assert set(report["accuracy"]) >= {"top1", "top5"}
        assert set(report["fidelity"]) >= FIDELITY_KEYS
        assert report["top1_drop_pp"] == pytest.approx(100 * (fp32_top1 - report["accuracy"]["top1"]), abs=1e-4)
        assert 0.0 <= report["fidelity"]["top1_agreement"] <= 1.0
        assert report["fidelity"]["kl_mean"] >= 0.0
    assert drift["host_caveat"] == int8_host_caveat()


def test_drift_numbers_are_what_the_models_compute(with_drift: Int8Result, fp32_path: Path, eval_set) -> None:
    """Recomputed here with plain ONNX Runtime sessions: the FP32 model, the int8 model with this host's
    int8 kernels, and the int8 model with graph optimisations off (QDQ emulated in float)."""
    drift = with_drift.info["drift"]
    fp32 = run_model(fp32_path, eval_set.inputs).astype(np.float64)
    truth = eval_set.labels
    assert drift["fp32"]["accuracy"]["top1"] == pytest.approx(float((fp32.argmax(1) == truth).mean()))
    for run, optimize in (("host", True), ("emulated", False)):
        int8 = run_model(with_drift.path, eval_set.inputs, optimize=optimize).astype(np.float64)
        assert not np.array_equal(int8, fp32)  # it really is another model
        agreement = float((int8.argmax(1) == fp32.argmax(1)).mean())
        assert drift[run]["fidelity"]["top1_agreement"] == pytest.approx(agreement), run
        assert drift[run]["accuracy"] == pytest.approx(accuracy(int8, truth)), run
        norms = np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1)
        cosine = float(np.mean((fp32 * int8).sum(1) / norms))
        assert drift[run]["fidelity"]["cosine_mean"] == pytest.approx(cosine, abs=1e-5), run
    # Emulated int8 of a well-calibrated GoogLeNet stays close to FP32 even on 8 photos.
    assert drift["emulated"]["fidelity"]["cosine_mean"] > 0.98


def test_layer_report_is_per_layer_sqnr_worst_first(with_drift: Int8Result, fp32_path: Path) -> None:
    layers = with_drift.info["drift"]["layers"]
    rows = layers["worst_first"]
    assert layers["images"] == min(EVAL_SIZE, LAYER_REPORT_IMAGES)
    fp32_nodes = {node.name for node in onnx.load(str(fp32_path), load_external_data=False).graph.node}
    assert len(rows) > 50
    values = [row["sqnr_db"] for row in rows]
    assert values == sorted(values)
    assert all(math.isfinite(v) and v > 0 for v in values)
    # Each tensor's own quantize-dequantize error; None where it is lossless (e.g. a max-pool of
    # values already on the int8 grid): JSON has no Infinity.
    # Quantizing one tensor to 8 bits costs far less than the error accumulated up to it (a ReLU the
    # quantizer folds into the QuantizeLinear is not quantization error).
    own = [row["qdq_sqnr_db"] for row in rows]
    assert all(v is None or (math.isfinite(v) and v > 20) for v in own), min(v for v in own if v is not None)
    assert sum(v is not None for v in own) > len(own) // 2
    named = [row["node"] for row in rows if row["node"] != "input"]
    assert set(named) <= fp32_nodes  # named after the FP32 graph's (torch module) nodes
    # Error accumulates through the network: the input is quantized far better than the worst layer.
    by_node = {row["node"]: row["sqnr_db"] for row in rows}
    assert by_node["input"] > values[0] + 10


# -- determinism and what calibration changes -----------------------------------------------------------
def test_same_model_same_calibration_gives_identical_bytes(twice: list[Int8Result]) -> None:
    first, second = twice
    assert first.path != second.path
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sidecar.read_bytes() == second.sidecar.read_bytes()
    assert first.info["drift"] is None


def test_weights_do_not_depend_on_calibration_but_activation_ranges_do(
    twice: list[Int8Result], with_drift: Int8Result, calib_source: FolderSource, imagenet_sample_dir: Path
) -> None:
    """The 4-photo set is part of the 8-photo set (same seeded order), so min-max ranges can only widen."""
    four_photos = FolderSource(imagenet_sample_dir, calib_source.preprocess, size=4, seed=0).chosen
    assert set(four_photos) < set(calib_source.chosen)
    four, eight = Graph(twice[0].path), Graph(with_drift.path)
    weights4, weights8 = four.int8_weights(), eight.int8_weights()
    assert weights4.keys() == weights8.keys() and len(weights4) == 58
    assert all(np.array_equal(weights4[k], weights8[k]) for k in weights4)
    scales4, scales8 = four.activation_scales(), eight.activation_scales()
    assert scales4.keys() == scales8.keys() and len(scales4) > 50
    assert all(scales8[k] >= scales4[k] * (1 - 1e-6) for k in scales4)
    assert sum(scales8[k] > scales4[k] * (1 + 1e-6) for k in scales4) >= 5


# -- --exclude ------------------------------------------------------------------------------------------
def test_excluded_nodes_stay_float(excluded: Int8Result) -> None:
    graph = Graph(excluded.path)
    for name in EXCLUDED:
        node = graph.nodes[name]
        for value in node.input[1:]:
            assert value in graph.inits, f"{name}: {value} is computed, not a float initializer"
            assert graph.inits[value].data_type == TensorProto.FLOAT
        consumers = [n for n in graph.model.graph.node if node.output[0] in n.input]
        assert all(n.op_type != "QuantizeLinear" for n in consumers)
    # Their neighbours are still quantized.
    assert graph.weight_dq("inception3a.branch1.conv") is not None
    assert graph.weight_dq("inception3a.branch4.1.conv") is None and graph.weight_dq("fc") is None
    assert json.loads(metadata_of(excluded.path)["quantization"])["exclude"] == list(EXCLUDED)


def test_unknown_exclude_is_an_error_and_writes_nothing(fp32_path: Path, calib_arrays, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = QuantizationConfig.arm64(exclude=("fc", "no_such_node"))
    with pytest.raises(ToolkitError, match=r"--exclude names no node of the model: no_such_node$"):
        quantize_onnx(fp32_path, ArraySource(calib_arrays), config, out_path=out / "googlenet.int8.onnx")
    assert not out.exists() or files_in(out) == []


# -- the x86 presets ------------------------------------------------------------------------------------
def test_x86_presets_use_uint8_activations_and_their_weight_range(x86: tuple[str, Int8Result]) -> None:
    target, result = x86
    graph = Graph(result.path)
    assert graph.activation_zero_point_types() == {TensorProto.UINT8}
    # reduce_range (AVX2 without VNNI): 7-bit weights so u8 x s8 pairs cannot saturate int16.
    assert graph.max_abs_int8_weight() == (64 if target == "x86-avx2" else 127)
    meta = json.loads(metadata_of(result.path)["quantization"])
    assert meta["target"] == target and meta["activation_type"] == "uint8"
    assert meta["reduce_range"] is (target == "x86-avx2")
    assert files_in(result.path.parent) == ["googlenet.int8.onnx", "googlenet.int8.onnx.json"]


def test_array_and_iterable_sources_are_described(x86: tuple[str, Int8Result], calib_arrays: np.ndarray) -> None:
    target, result = x86
    calibration = json.loads(metadata_of(result.path)["calibration"])
    assert calibration["images"] == len(calib_arrays)
    if target == "x86-avx2":
        assert calibration == {"kind": "iterable", "path": "four photos", "images": 4}
    else:
        assert calibration["kind"] == "arrays" and calibration["path"].endswith("calib.npy")
        assert calibration["data_sha256"] == hashlib.sha256(calib_arrays.tobytes()).hexdigest()


# -- failures leave nothing behind -----------------------------------------------------------------------
def test_unreadable_calibration_folder_is_an_error_and_writes_nothing(
    fp32_path: Path, bvlc_loaded: LoadedModel, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(b"not a photo\n" * 16)
    out = tmp_path / "out"
    with pytest.raises(ToolkitError, match="no calibration image could be read"):
        quantize_onnx(
            fp32_path,
            FolderSource(folder, bvlc_loaded.preprocess, size=2),
            QuantizationConfig.arm64(),
            out_path=out / "googlenet.int8.onnx",
        )
    assert not out.exists() or files_in(out) == []


def test_wrongly_shaped_calibration_data_is_a_one_line_error(fp32_path: Path, tmp_path: Path) -> None:
    """Arrays the model cannot take (here 200x200 instead of 224x224) must end as a ToolkitError naming
    the shapes, not as ONNX Runtime's multi-line InvalidArgument from inside the calibrator."""
    out = tmp_path / "out"
    wrong = IterableSource([np.zeros((3, 200, 200), np.float32)])
    with pytest.raises(ToolkitError) as caught:
        quantize_onnx(fp32_path, wrong, QuantizationConfig.arm64(), out_path=out / "googlenet.int8.onnx")
    assert "\n" not in str(caught.value) and "200" in str(caught.value)
    assert not out.exists() or files_in(out) == []
