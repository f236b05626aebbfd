"""The validation views the studies measure on, so that each study splits a draw the same way."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.int8_fidelity import _validation_split
from quantize.calibration import ArraySource, FolderSource


def split_study_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of every study on validation splits: weights, photos, draw seeds, the JSON to write."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    return parser


def validation_views(loaded, calib: Path, seed: int, count: int = 30) -> tuple[ArraySource, np.ndarray]:
    """Calibration draw `seed` (100 photos) split as `benchmarks.int8_fidelity --validation 30` splits it: the
    photos to fit on, and the `count` held-out ones followed by their mirror images (NCHW). The evaluation
    photos are never read."""
    draw = FolderSource(calib, loaded.preprocess, size=100, seed=seed)
    fit, held = _validation_split(draw, loaded, calib, count, seed)
    return fit, np.concatenate([held.inputs, held.inputs[..., ::-1]]).copy()


@dataclass(frozen=True)
class Split:
    """One draw as a study measures it: the photos to fit on, the held-out views and FP32's logits of them."""

    seed: int
    fit: ArraySource
    views: np.ndarray  # NCHW, the held-out photos then their mirror images
    inputs: torch.Tensor  # `views` as a tensor
    reference: torch.Tensor  # FP32 logits of `inputs`


def logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(inputs[i : i + 20]) for i in range(0, len(inputs), 20)])


def logit_rms(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).pow(2).mean().sqrt())


STEM = ("conv1.conv",)  # the float stem of the recipes: its weights are never rounded


@torch.no_grad()
def replace_weights(model: torch.nn.Module, images: np.ndarray, new_weight: Callable) -> None:
    """Each conv/linear weight of `model` but the stem's, as [out, in], replaced in place by `new_weight(weight,
    H, positions)`: H from `images` (NCHW) with the positions `learned_rounding` samples, seed 0."""
    from quantize.rounding import RoundingSettings, layer_hessians, quantized_layers

    layers = quantized_layers(model, STEM)
    sample = RoundingSettings().positions_per_input
    stats = layer_hessians(model, images, layers, positions_per_input=sample, seed=0)
    for name, module in layers.items():
        weight = module.weight.detach().float().reshape(module.weight.shape[0], -1)
        hessian, count = stats[name]
        module.weight.copy_(new_weight(weight, hessian, count).reshape(module.weight.shape))


def study_splits(loaded, args: argparse.Namespace) -> Iterator[Split]:
    """Each of `args.seeds` split by `validation_views`, on two torch threads (the studies' 2-core budget)."""
    torch.set_num_threads(2)
    for seed in args.seeds:
        fit, views = validation_views(loaded, args.calib, seed)
        inputs = torch.from_numpy(views)
        yield Split(seed, fit, views, inputs, logits(loaded.model.eval(), inputs))


class Cells(list):
    """A study's results: each printed as one JSON line when added, all written as `{"cells": [...]}`."""

    def add(self, **cell) -> None:
        self.append(cell)
        print(json.dumps(cell), flush=True)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"cells": self}, indent=1) + "\n")
