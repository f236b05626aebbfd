"""`python -m export onnx` and `export_onnx`: the graph, the metadata, the numbers, batch axes, determinism.

The BVLC export (`bvlc_onnx_export`, conftest) is made once per session; the other exports use random or
He-initialised weights without evaluation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from export.evaluation import softmax
from export.images import list_images, load_image
from export.labels import imagenet_labels, label_for_image
from export.model import GoogLeNet
from export.onnx_export import OnnxExportResult
from export.preprocess import BVLC_PREPROCESS, Preprocess
from export.weights import random_model

# every test here reads a full-model export (the BVLC one with its 500-photo evaluation, or CLI exports)
pytestmark = pytest.mark.slow

PREPROCESS_KEYS = {"color", "scale", "mean", "std", "resize", "resize_mode", "crop", "layout"}
REFERENCE_PARAMS = 6_998_552


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def graph_of(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def metadata_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in graph_of(path).metadata_props}


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def photo_batch(spec: Preprocess, photos: list[Path]) -> np.ndarray:
    return np.stack([spec.apply(load_image(p)) for p in photos])


# -- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_init_exports(run_export_cli, tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    """Two independent `python -m export onnx --no-eval --seed 0` runs (no weights anywhere), side by side."""
    root = tmp_path_factory.mktemp("random_init")
    outs = [root / "first", root / "second"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda out: run_export_cli("onnx", "--no-eval", "--seed", "0", "--out", out), outs))
    return list(zip(runs, outs, strict=True))


@pytest.fixture(scope="module")
def random_init_onnx(random_init_exports: list[tuple]) -> Path:
    result, out_dir = random_init_exports[0]
    assert result.returncode == 0, result.stderr
    return out_dir / "googlenet.onnx"


@pytest.fixture(scope="module")
def bvlc_onnx(bvlc_onnx_export: OnnxExportResult) -> Path:
    return bvlc_onnx_export.path


@pytest.fixture(params=["random_init_onnx", "bvlc_onnx"])
def artifact(request: pytest.FixtureRequest) -> Path:
    """Each published FP32 artifact: the random-init CLI export and the BVLC export."""
    return request.getfixturevalue(request.param)


# -- the graph ---------------------------------------------------------------------------------------------
def test_lrn_is_lowered_to_elementwise_ops(artifact: Path) -> None:
    """ONNX Runtime's LRN kernel is scalar, so each LRN is written as marked Mul/Pad/Slice/Add/Sqrt/Div nodes
    (export/onnx_lrn.py), not as the exporter's 5-D AveragePool decomposition."""
    from export.onnx_lrn import LOWERED_LRN

    model = graph_of(artifact)
    ops = Counter(node.op_type for node in model.graph.node if node.doc_string != LOWERED_LRN)
    assert ops["Conv"] == 57
    assert ops["LRN"] == 0
    assert ops["Gemm"] + ops["MatMul"] == 1
    lowered = [node for node in model.graph.node if node.doc_string == LOWERED_LRN]
    assert {node.name.split("/")[0] for node in lowered} == {"norm1", "norm2"}
    band = {"Range", "Unsqueeze", "Sub", "GreaterOrEqual", "LessOrEqual", "And", "Cast", "Reshape"}  # from scalars
    assert {node.op_type for node in lowered} == {"Mul", "Conv", "Sqrt", "Div"} | band
    assert [node.output[0] for node in lowered if node.name.endswith("/lrn_out")] == ["norm1", "norm2"]
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("AveragePool", "MaxPool"):
            assert len(attrs["kernel_shape"]) == 2, f"{node.op_type} {node.name} pools over {attrs['kernel_shape']}"
    assert not {"Pow", "ReduceSum", "ReduceMean"} & set(ops), f"LRN decomposed by the exporter: {ops}"
    assert json.loads(artifact.with_name(artifact.name + ".json").read_text())["lrn"]["lowered"] == ["norm1", "norm2"]


def test_one_self_contained_file(artifact: Path) -> None:
    path = artifact
    assert sorted(p.name for p in path.parent.iterdir()) == ["googlenet.onnx", "googlenet.onnx.json"]
    model = graph_of(path)
    assert model.graph.initializer
    for tensor in model.graph.initializer:
        assert tensor.data_location == TensorProto.DEFAULT and not tensor.external_data, tensor.name
    assert path.stat().st_size > 27_000_000  # 7M float32 weights live inside the file


def test_static_batch_by_default(random_init_onnx: Path, shared_photos: list[Path]) -> None:
    model = graph_of(random_init_onnx)
    assert [(v.name, dims(v)) for v in model.graph.input] == [("input", [1, 3, 224, 224])]
    assert [(v.name, dims(v)) for v in model.graph.output] == [("logits", [1, 1000])]
    sidecar = json.loads(random_init_onnx.with_name("googlenet.onnx.json").read_text(encoding="utf-8"))
    assert sidecar["input"]["shape"] == [1, 3, 224, 224] and sidecar["output"]["shape"] == [1, 1000]
    runner = session(random_init_onnx)
    batch = photo_batch(BVLC_PREPROCESS, shared_photos[:3])
    assert runner.run(None, {"input": batch[:1]})[0].shape == (1, 1000)
    with pytest.raises(Exception, match=r"(?i)dimension"):
        runner.run(None, {"input": batch})


def test_dynamic_batch(
    ten_class_dynamic_export: tuple, ten_class_state: dict[str, torch.Tensor], shared_photos: list[Path]
) -> None:
    result, out_dir = ten_class_dynamic_export
    assert result.returncode == 0, result.stderr
    path = out_dir / "googlenet.onnx"
    model = graph_of(path)
    (given,) = model.graph.input
    (produced,) = model.graph.output
    assert isinstance(dims(given)[0], str) and dims(given)[0] and dims(given)[1:] == [3, 224, 224]
    assert isinstance(dims(produced)[0], str) and dims(produced)[1:] == [10]
    sidecar = json.loads((out_dir / "googlenet.onnx.json").read_text(encoding="utf-8"))
    assert sidecar["input"]["shape"] == ["batch", 3, 224, 224]

    spec = Preprocess.from_json(metadata_of(path)["preprocess"])
    batch = photo_batch(spec, shared_photos[:3])
    runner = session(path)
    together = runner.run(["logits"], {"input": batch})[0]
    assert together.shape == (3, 10)
    one_by_one = np.concatenate([runner.run(["logits"], {"input": batch[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-4 * np.ptp(together))

    reference = GoogLeNet(num_classes=10)
    reference.load_state_dict(ten_class_state)
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(batch)).numpy()
    logit_range = float(np.ptp(expected))
    assert expected.std(axis=0).max() > 1e-3 * logit_range  # the three photos are told apart
    assert np.abs(together - expected).max() <= 1e-4 * logit_range


# -- random init, determinism --------------------------------------------------------------------------
def test_random_init_warns_and_exits_0(random_init_exports: list[tuple]) -> None:
    for result, out_dir in random_init_exports:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        warning = " ".join(result.stderr.split()).lower()
        assert re.search(r"warning:.*random weights", warning), result.stderr
        path = out_dir / "googlenet.onnx"
        metadata = metadata_of(path)
        assert metadata["weights"] == "random-init" and metadata["weights_format"] == "random-init"
        assert metadata["weights_sha256"] == ""
        sidecar = json.loads((out_dir / "googlenet.onnx.json").read_text(encoding="utf-8"))
        assert sidecar["weights"] == "random-init" and sidecar["weights_sha256"] is None
        assert any("RANDOM" in w for w in sidecar["warnings"])
        assert sidecar["evaluation"] is None


def test_same_seed_gives_byte_identical_artifacts(random_init_exports: list[tuple]) -> None:
    (first, first_dir), (second, second_dir) = random_init_exports
    assert first.returncode == 0 and second.returncode == 0
    onnx_a, onnx_b = (d / "googlenet.onnx" for d in (first_dir, second_dir))
    assert onnx_a.read_bytes() == onnx_b.read_bytes()
    json_a, json_b = (d / "googlenet.onnx.json" for d in (first_dir, second_dir))
    assert json_a.read_text(encoding="utf-8") == json_b.read_text(encoding="utf-8")


def _first_conv_weight(model: onnx.ModelProto) -> np.ndarray:
    inits = {i.name: i for i in model.graph.initializer}
    entry = model.graph.input[0].name
    node = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == entry)
    return numpy_helper.to_array(inits[node.input[1]])


def test_seed_decides_the_weights(random_init_onnx: Path) -> None:
    exported = _first_conv_weight(graph_of(random_init_onnx))
    seed0 = random_model(seed=0).conv1.conv.weight.detach().numpy()
    seed1 = random_model(seed=1).conv1.conv.weight.detach().numpy()
    np.testing.assert_array_equal(exported, seed0)
    assert not np.array_equal(seed0, seed1)


# -- the BVLC export -----------------------------------------------------------------------------------
def test_bvlc_export_files_and_checker(bvlc_onnx_export: OnnxExportResult) -> None:
    path, sidecar = bvlc_onnx_export.path, bvlc_onnx_export.sidecar
    assert path.name == "googlenet.onnx" and path.is_file()
    assert sidecar.name == "googlenet.onnx.json" and sidecar.is_file()
    onnx.checker.check_model(str(path), full_check=True)


def test_bvlc_metadata(bvlc_onnx_export: OnnxExportResult, bvlc_weights: Path, synset_words_file: Path) -> None:
    metadata = metadata_of(bvlc_onnx_export.path)
    preprocess = json.loads(metadata["preprocess"])
    assert set(preprocess) >= PREPROCESS_KEYS
    assert preprocess["color"] == "BGR" and preprocess["scale"] == 1.0
    assert preprocess["mean"] == [104.0, 117.0, 123.0] and preprocess["std"] == [1.0, 1.0, 1.0]
    assert preprocess["resize"] == [256, 256] and preprocess["resize_mode"] == "stretch"
    assert preprocess["crop"] == 224 and preprocess["layout"] == "NCHW"
    assert Preprocess.from_json(metadata["preprocess"]) == BVLC_PREPROCESS

    labels = json.loads(metadata["labels"])
    assert len(labels["names"]) == 1000 and labels["names"][0] == "tench"
    assert labels["wnids"][0] == "n01440764"
    assert metadata["weights_sha256"] == sha256_of(bvlc_weights)
    assert metadata["weights_format"] == "bvlc-onnx" and metadata["arch"] == "reference"
    assert metadata["num_classes"] == "1000"


def test_bvlc_sidecar(bvlc_onnx_export: OnnxExportResult) -> None:
    path = bvlc_onnx_export.path
    sidecar = json.loads(bvlc_onnx_export.sidecar.read_text(encoding="utf-8"))
    assert sidecar["params"] == REFERENCE_PARAMS
    assert sidecar["macs"] == pytest.approx(1.58e9, rel=0.01)
    assert sidecar["sha256"] == sha256_of(path) and sidecar["size_bytes"] == path.stat().st_size
    validation = sidecar["validation"]
    assert validation["passed"] is True and validation["images"] >= 1
    assert validation["max_abs_logit_diff"] <= 1e-4 * validation["logit_range"]
    metadata = metadata_of(path)
    assert sidecar["preprocess"] == json.loads(metadata["preprocess"])  # the sidecar holds the same spec
    assert sidecar["labels"] == json.loads(metadata["labels"])
    assert sidecar["input"] == {"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"}
    assert sidecar["output"]["name"] == "logits" and sidecar["output"]["shape"] == [1, 1000]


def test_bvlc_accuracy_on_the_imagenet_sample(bvlc_onnx_export: OnnxExportResult, imagenet_sample_dir: Path) -> None:
    evaluation = json.loads(bvlc_onnx_export.sidecar.read_text(encoding="utf-8"))["evaluation"]
    assert evaluation, "the BVLC export was not evaluated"
    assert evaluation["images"] == 500 and not evaluation.get("unreadable")
    accuracy = evaluation["accuracy"]
    assert accuracy["images"] == 500
    assert 0.77 <= accuracy["top1"] <= 0.82
    assert 0.91 <= accuracy["top5"] <= 0.96
    source = evaluation["vs_source_onnx"]
    assert source["top1_agreement"] == 1.0
    assert source["max_abs_prob_diff"] <= 1e-4
    assert json.loads(metadata_of(bvlc_onnx_export.path)["evaluation"])["accuracy"] == accuracy


def test_bvlc_export_agrees_with_the_source_onnx(
    bvlc_onnx_export: OnnxExportResult, bvlc_weights: Path, imagenet_sample_dir: Path, synset_words_file: Path
) -> None:
    """Independent of the sidecar: both files in ONNX Runtime on 50 ImageNet photos, preprocessed as the
    exported file's own metadata says."""
    spec = Preprocess.from_json(metadata_of(bvlc_onnx_export.path)["preprocess"])
    photos = list_images(imagenet_sample_dir).images[::10]
    assert len(photos) == 50
    batch = photo_batch(spec, photos)

    exported = session(bvlc_onnx_export.path)
    logits = np.concatenate([exported.run(["logits"], {"input": batch[i : i + 1]})[0] for i in range(len(batch))])
    source = session(bvlc_weights)
    assert [i.name for i in source.get_inputs()] == ["data"]
    prob, source_logits = source.run(["prob", "logits"], {"data": batch})

    assert np.array_equal(logits.argmax(axis=1), prob.argmax(axis=1))
    assert np.abs(softmax(logits) - prob).max() <= 1e-4
    assert np.abs(logits - source_logits).max() <= 1e-4 * np.ptp(source_logits)

    labels = imagenet_labels()
    truth = np.array([label_for_image(p, imagenet_sample_dir, labels) for p in photos])
    assert (logits.argmax(axis=1) == truth).mean() >= 0.6  # the metadata's preprocessing is the right one
