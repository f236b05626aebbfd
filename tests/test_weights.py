"""Every weights source: reference state_dicts (plain, wrapped, DataParallel-prefixed), torchvision
state_dicts, the BVLC ONNX, `$GOOGLENET_WEIGHTS`, and seeded random init."""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edge_runtime.sessions import OnnxRunner
from export import paths
from export.errors import ToolkitError
from export.images import load_image
from export.model import GoogLeNet
from export.preprocess import BVLC_PREPROCESS, TORCHVISION_PREPROCESS, Preprocess
from export.torchvision_variant import TorchvisionGoogLeNet
from export.weights import RANDOM_INIT, LoadedModel, RandomInitWarning, load_model, random_model


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    different = [k for k in state if not torch.equal(state[k], expected[k])]
    assert not different, f"weights differ from the checkpoint: {different[:3]}"


def onnx_vs_torch(onnx_path: Path, model: torch.nn.Module, photos: list[Path]) -> tuple[float, float, np.ndarray]:
    """(max |ONNX - PyTorch| logit difference, logit range, PyTorch logits) on real photos, preprocessed
    as the artifact's own metadata says."""
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    spec = Preprocess.from_json(metadata["preprocess"])
    inputs = np.stack([spec.apply(load_image(p)) for p in photos])
    got = OnnxRunner(onnx_path)(inputs)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(inputs)).numpy()
    return float(np.abs(got - expected).max()), float(expected.max() - expected.min()), expected


@pytest.fixture(scope="module")
def reference_state(reference_checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(reference_checkpoint, weights_only=True)


# -- reference state_dicts ----------------------------------------------------------------------------
CHECKPOINT_FORMS = {
    "plain": lambda sd: sd,
    "wrapped": lambda sd: {"state_dict": sd, "epoch": 3},
    "module-prefix": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "wrapped-module-prefix": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("form", list(CHECKPOINT_FORMS))
def test_reference_state_dict_loads(form: str, reference_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / f"{form}.pth"
    torch.save(CHECKPOINT_FORMS[form](reference_state), path)
    loaded = load_model(path)
    assert isinstance(loaded.model, GoogLeNet) and not loaded.model.training
    assert (loaded.arch, loaded.source_format, loaded.num_classes) == ("reference", "state_dict", 1000)
    assert loaded.preprocess == BVLC_PREPROCESS
    assert loaded.source == str(path) and loaded.sha256 == sha256_of(path)
    assert not loaded.is_random
    assert_same_state(loaded.model, reference_state)


@pytest.mark.slow  # a full export (ten_class_dynamic_export)
def test_wrapped_prefixed_state_dict_exports(
    ten_class_dynamic_export: tuple, ten_class_checkpoint: Path, ten_class_state: dict[str, torch.Tensor]
) -> None:
    """`{"state_dict": {"module.<key>": ...}}` through `--weights` (its numbers: test_export_onnx)."""
    result, out_dir = ten_class_dynamic_export
    assert result.returncode == 0, result.stderr
    path = out_dir / "googlenet.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert metadata["weights"] == str(ten_class_checkpoint) and metadata["weights_format"] == "state_dict"
    assert metadata["weights_sha256"] == sha256_of(ten_class_checkpoint)
    assert Preprocess.from_json(metadata["preprocess"]) == BVLC_PREPROCESS
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    fc = ten_class_state["fc.weight"].numpy()
    found = [w for w in inits.values() if w.ndim == 2 and (np.array_equal(w, fc) or np.array_equal(w.T, fc))]
    assert found, "the classifier weights are not in the exported file"


def test_non_finite_weights_are_rejected(reference_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    broken = dict(reference_state)
    broken["inception4c.branch2.1.conv.weight"] = broken["inception4c.branch2.1.conv.weight"].clone()
    broken["inception4c.branch2.1.conv.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(broken, path)
    with pytest.raises(ToolkitError, match=r"nan\.pt: .*NaN.*inception4c\.branch2\.1\.conv\.weight"):
        load_model(path)


# -- torchvision state_dicts --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchvision_model(shared_photos: list[Path]) -> TorchvisionGoogLeNet:
    """torchvision's layout with aux heads and non-trivial batch norm: running statistics measured on
    real photos, then perturbed, and random scales and shifts."""
    torch.manual_seed(0)
    model = TorchvisionGoogLeNet(aux_logits=True)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    photos = torch.from_numpy(np.stack([TORCHVISION_PREPROCESS.apply(load_image(p)) for p in shared_photos[:4]]))
    with torch.no_grad():
        model.train()(photos)
        for bn in batch_norms:
            bn.running_mean.add_(torch.randn_like(bn.running_mean) * 0.05 * bn.running_var.sqrt())
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5))
            bn.bias.copy_(torch.randn_like(bn.bias) * 0.1)
            bn.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_export(
    torchvision_model: TorchvisionGoogLeNet, run_export_cli, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess, Path]:
    folder = tmp_path_factory.mktemp("torchvision")
    checkpoint = folder / "torchvision_googlenet.pth"
    torch.save(torchvision_model.state_dict(), checkpoint)
    out_dir = folder / "out"
    result = run_export_cli("onnx", "--weights", checkpoint, "--no-eval", "--out", out_dir)
    return checkpoint, result, out_dir


def test_torchvision_state_dict_is_detected(torchvision_model: TorchvisionGoogLeNet, tmp_path: Path) -> None:
    state = torchvision_model.state_dict()
    assert any(not torch.equal(bn, torch.zeros_like(bn)) for k, bn in state.items() if k.endswith("running_mean"))
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_model(path)
    assert isinstance(loaded.model, TorchvisionGoogLeNet)
    assert (loaded.arch, loaded.source_format) == ("torchvision", "torchvision-state_dict")
    assert loaded.preprocess == TORCHVISION_PREPROCESS
    assert_same_state(loaded.model, state)


@pytest.mark.slow  # a full CLI export
def test_torchvision_state_dict_round_trips_through_the_cli(
    torchvision_export: tuple[Path, subprocess.CompletedProcess, Path],
    torchvision_model: TorchvisionGoogLeNet,
    shared_photos: list[Path],
) -> None:
    checkpoint, result, out_dir = torchvision_export
    assert result.returncode == 0, result.stderr
    onnx_path = out_dir / "googlenet.onnx"
    sidecar = json.loads((out_dir / "googlenet.onnx.json").read_text(encoding="utf-8"))
    assert sidecar["arch"] == "torchvision" and sidecar["weights_format"] == "torchvision-state_dict"
    assert sidecar["weights_sha256"] == sha256_of(checkpoint)
    assert sidecar["preprocess"] == TORCHVISION_PREPROCESS.to_dict()
    assert sidecar["preprocess"]["color"] == "RGB"
    assert (sidecar["preprocess"]["resize"], sidecar["preprocess"]["resize_mode"]) == (256, "shorter")
    assert sidecar["validation"]["passed"] is True

    max_diff, logit_range, logits = onnx_vs_torch(onnx_path, torchvision_model, shared_photos[:3])
    assert logits.std(axis=0).max() > 1e-3 * logit_range
    assert max_diff <= 1e-4 * logit_range


# -- BVLC ONNX ------------------------------------------------------------------------------------------
def test_bvlc_onnx_weights_are_imported_by_caffe_layer_name(bvlc_loaded: LoadedModel, bvlc_weights: Path) -> None:
    assert (bvlc_loaded.arch, bvlc_loaded.source_format) == ("reference", "bvlc-onnx")
    assert bvlc_loaded.sha256 == sha256_of(bvlc_weights)
    assert bvlc_loaded.preprocess == BVLC_PREPROCESS
    model = bvlc_loaded.model
    assert isinstance(model, GoogLeNet) and model.aux1 is None and not model.training
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(bvlc_weights)).graph.initializer}
    pairs = {
        "conv1/7x7_s2": model.conv1.conv,
        "conv2/3x3": model.conv2.conv,
        "inception_3a/5x5": model.inception3a.branch3[1].conv,
        "inception_4e/pool_proj": model.inception4e.branch4[1].conv,
        "inception_5b/3x3_reduce": model.inception5b.branch2[0].conv,
        "loss3/classifier": model.fc,
    }
    for layer, module in pairs.items():
        np.testing.assert_array_equal(module.weight.detach().numpy(), inits[f"{layer}/W"], err_msg=layer)
        np.testing.assert_array_equal(module.bias.detach().numpy(), inits[f"{layer}/b"], err_msg=layer)


# -- $GOOGLENET_WEIGHTS and random init -------------------------------------------------------------
def test_weights_env_is_used_without_weights(
    reference_checkpoint: Path, reference_state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.WEIGHTS_ENV, str(reference_checkpoint))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomInitWarning)
        loaded = load_model()
    assert loaded.source == str(reference_checkpoint) and loaded.source_format == "state_dict"
    assert_same_state(loaded.model, reference_state)


def test_explicit_weights_win_over_the_env(reference_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.WEIGHTS_ENV, str(reference_checkpoint.with_name("absent.pt")))
    assert load_model(reference_checkpoint).source == str(reference_checkpoint)
    with pytest.raises(ToolkitError, match=r"absent\.pt: weights file not found"):
        load_model()


def test_random_init_is_flagged_and_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.WEIGHTS_ENV, raising=False)
    with pytest.warns(RandomInitWarning, match="RANDOM"):
        loaded = load_model(seed=0)
    assert loaded.is_random and loaded.sha256 is None
    assert loaded.describe()["weights"] == RANDOM_INIT and loaded.source_format == RANDOM_INIT
    assert loaded.preprocess == BVLC_PREPROCESS
    assert any("RANDOM" in note for note in loaded.warnings)
    assert_same_state(random_model(seed=0), loaded.model.state_dict())
    other = random_model(seed=1).state_dict()
    assert not torch.equal(other["conv1.conv.weight"], loaded.model.state_dict()["conv1.conv.weight"])


@pytest.mark.parametrize("classes", [0, -3])
def test_num_classes_must_be_positive(classes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.WEIGHTS_ENV, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        with pytest.raises(ToolkitError, match=r"(?i)class"):
            load_model(num_classes=classes)


def test_random_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    random_model(seed=5)
    assert torch.equal(torch.rand(3), expected)
