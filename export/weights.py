"""Loading GoogLeNet weights from every source the toolkit accepts, each with its own preprocessing.

Sources: a reference `state_dict` (.pt/.pth, plain or under "state_dict"/"model"), a torchvision
GoogLeNet `state_dict` (detected by its keys), a BVLC GoogLeNet in ONNX (Caffe layer names, imported by
name with shape checks), `$GOOGLENET_WEIGHTS`, or seeded random initialisation (loudly flagged).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_runtime.metrics import file_sha256
from export import paths
from export.errors import ToolkitError, one_line
from export.labels import LabelSet, generic_labels, imagenet_labels, read_label_file
from export.model import GoogLeNet, caffe_layer_map
from export.preprocess import BVLC_PREPROCESS, TORCHVISION_PREPROCESS, Preprocess
from export.torchvision_variant import TorchvisionGoogLeNet

RANDOM_INIT = "random-init"
IMAGENET_CLASSES = 1000


class RandomInitWarning(UserWarning):
    """Emitted when no weights were given: the exported model's predictions are meaningless."""


@dataclass
class LoadedModel:
    """A model in eval mode plus everything that must travel with its artifacts."""

    model: nn.Module
    arch: str  # "reference" | "torchvision"
    source: str  # a path, or "random-init"
    source_format: str  # "state_dict" | "torchvision-state_dict" | "bvlc-onnx" | "random-init"
    sha256: str | None
    preprocess: Preprocess
    labels: LabelSet
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def is_random(self) -> bool:
        return self.source_format == RANDOM_INIT

    def describe(self) -> dict:
        return {
            "weights": self.source if not self.is_random else RANDOM_INIT,
            "weights_format": self.source_format,
            "weights_sha256": self.sha256,
            "arch": self.arch,
            "num_classes": self.num_classes,
        }


# -- state_dict sources ------------------------------------------------------------------------------
def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/pickle-unsafe files
        raise ToolkitError(f"cannot read PyTorch checkpoint ({one_line(exc)})", path) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ToolkitError("checkpoint is not a state_dict (expected a dict of tensors)", path)
    return {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in data.items()}


def _classes_in(state: dict[str, torch.Tensor], path: Path) -> int:
    weight = state.get("fc.weight")
    if weight is None or weight.ndim != 2:
        raise ToolkitError("state_dict has no classifier 'fc.weight'", path)
    return int(weight.shape[0])


def _build_from_state_dict(path: Path, state: dict[str, torch.Tensor], num_classes: int | None) -> nn.Module:
    if "conv1.conv.weight" in state and "conv1.bn.running_mean" in state:
        arch_cls: type[nn.Module] = TorchvisionGoogLeNet
    elif "conv1.conv.weight" in state and "inception3a.branch3.1.conv.weight" in state:
        arch_cls = GoogLeNet
    else:
        sample = ", ".join(list(state)[:3]) or "no keys"
        raise ToolkitError(f"state_dict is not a GoogLeNet ({sample}, ...)", path)
    classes = _classes_in(state, path)
    _check_class_count(classes, num_classes, path)
    aux = any(k.startswith("aux1.") for k in state)
    model = arch_cls(num_classes=classes, aux_logits=aux)
    expected = model.state_dict()
    for key, tensor in state.items():  # load_state_dict(strict=False) still raises on these, as a traceback
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise ToolkitError(
                f"{key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)} for {arch_cls.__name__}",
                path,
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        detail = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise ToolkitError(f"state_dict does not fit {arch_cls.__name__} ({detail})", path)
    _check_finite(model, path)
    return model


def _check_class_count(found: int, requested: int | None, path: Path) -> None:
    if requested is None and found != IMAGENET_CLASSES:
        raise ToolkitError(
            f"classifier has {found} classes, not {IMAGENET_CLASSES}; pass --num-classes {found} (and --labels)",
            path,
        )
    if requested is not None and requested != found:
        raise ToolkitError(f"classifier has {found} classes but --num-classes is {requested}", path)


def _check_finite(model: nn.Module, path: Path) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ToolkitError(f"weights contain NaN or infinity ({name})", path)


# -- BVLC ONNX source --------------------------------------------------------------------------------
def _onnx_layer_tensors(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Caffe layer name -> (weight, bias) for every Conv/Gemm whose weight is an initializer."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise ToolkitError(f"not a readable ONNX model ({one_line(exc)})", path) from None
    inits = {i.name: i for i in graph.initializer}
    known = sorted(caffe_layer_map(GoogLeNet(aux_logits=True)), key=len, reverse=True)
    layers: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        layer = next((name for name in known if node.input[1].startswith(name)), None)
        if layer is None:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            weight = weight if trans_b else weight.T
        layers[layer] = (weight, bias)
    return layers


def _build_from_bvlc_onnx(path: Path, num_classes: int | None) -> nn.Module:
    layers = _onnx_layer_tensors(path)
    if "conv1/7x7_s2" not in layers or "loss3/classifier" not in layers:
        raise ToolkitError("ONNX model is not a BVLC GoogLeNet (no Caffe layers such as conv1/7x7_s2)", path)
    classes = int(layers["loss3/classifier"][0].shape[0])
    _check_class_count(classes, num_classes, path)
    model = GoogLeNet(num_classes=classes, aux_logits="loss1/classifier" in layers)
    modules = dict(model.named_modules())
    for caffe, ours in caffe_layer_map(model).items():
        if caffe not in layers:
            raise ToolkitError(f"ONNX model lacks the Caffe layer {caffe}", path)
        weight, bias = layers[caffe]
        module = modules[ours]
        for tensor, param, what in ((weight, module.weight, "weight"), (bias, module.bias, "bias")):
            if tensor is None or tuple(tensor.shape) != tuple(param.shape):
                found = None if tensor is None else tuple(tensor.shape)
                raise ToolkitError(f"{caffe} {what} has shape {found}, expected {tuple(param.shape)}", path)
            with torch.no_grad():
                param.copy_(torch.from_numpy(np.array(tensor, dtype=np.float32, copy=True)))
    _check_finite(model, path)
    return model


# -- public API --------------------------------------------------------------------------------------
def random_model(num_classes: int = IMAGENET_CLASSES, seed: int = 0, arch: str = "reference") -> nn.Module:
    """Seeded random initialisation: the same seed gives the same weights (and the same artifact)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = (GoogLeNet if arch == "reference" else TorchvisionGoogLeNet)(num_classes=num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def load_model(
    weights: str | Path | None = None,
    num_classes: int | None = None,
    labels: str | Path | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Build the eval-mode model for `weights` (or `$GOOGLENET_WEIGHTS`, or seeded random init)."""
    if weights is None and os.environ.get(paths.WEIGHTS_ENV):
        weights = os.environ[paths.WEIGHTS_ENV]
    notes: list[str] = []
    if num_classes is not None and num_classes < 1:
        raise ToolkitError(f"--num-classes must be at least 1 (got {num_classes})")
    if weights is None:
        classes = IMAGENET_CLASSES if num_classes is None else num_classes
        model: nn.Module = random_model(classes, seed)
        message = (
            f"no --weights given (and ${paths.WEIGHTS_ENV} unset): using RANDOM weights (seed {seed}); "
            "the exported model's predictions are meaningless"
        )
        warnings.warn(message, RandomInitWarning, stacklevel=2)
        notes.append(message)
        source, source_format, digest, preprocess = RANDOM_INIT, RANDOM_INIT, None, BVLC_PREPROCESS
    else:
        path = Path(weights)
        if not path.is_file():
            raise ToolkitError("weights file not found", path)
        if path.suffix.lower() == ".onnx":
            model, source_format, preprocess = _build_from_bvlc_onnx(path, num_classes), "bvlc-onnx", BVLC_PREPROCESS
        else:
            model = _build_from_state_dict(path, _read_checkpoint(path), num_classes)
            if isinstance(model, TorchvisionGoogLeNet):
                source_format, preprocess = "torchvision-state_dict", TORCHVISION_PREPROCESS
            else:
                source_format, preprocess = "state_dict", BVLC_PREPROCESS
        source, digest = str(path), file_sha256(path)
    model.eval()
    label_set = _resolve_labels(labels, int(model.num_classes), notes)
    return LoadedModel(
        model=model,
        arch=model.arch,
        source=source,
        source_format=source_format,
        sha256=digest,
        preprocess=preprocess,
        labels=label_set,
        warnings=notes,
    )


def _resolve_labels(labels: str | Path | None, num_classes: int, notes: list[str]) -> LabelSet:
    if labels is not None:
        label_set = read_label_file(labels)
        if len(label_set) != num_classes:
            raise ToolkitError(f"has {len(label_set)} labels but the model has {num_classes} classes", labels)
        return label_set
    if num_classes == IMAGENET_CLASSES:
        label_set = imagenet_labels()
        if label_set is not None:
            return label_set
        notes.append("ImageNet label list not found (shared/data/synset_words.txt); using class_<i> names")
    return generic_labels(num_classes)
