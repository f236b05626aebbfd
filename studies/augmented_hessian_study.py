"""GPTQ's H from more views of the same fit photos (crops and mirrors): weights-only logit error on validation splits.

    python -m studies.augmented_hessian_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --views 1 5 10 --out ah.json

Why: the deep layers (inception 4e-5b, the classifier) carry about half of the weight error and are fitted from
few positions (7x7 per photo, one for the classifier), so their H is poorly conditioned and `auto_damping` damps
them hard. Caffe trained GoogLeNet on random 224 crops of the 256x256 image and their mirrors, so those views are
in distribution: 5 = the centre and the four corners, 10 = those and their mirrors. `--damping-as-photos` keeps
the damping of the photos alone (views of one photo are not independent samples). `--extra-photos N` is a
diagnostic of whether data limits the fit at all: it also fits on N real photos from outside the draw (photos
the five-draw measurement evaluates on, so never a way to choose a recipe), centre crops only.
Split as `benchmarks.int8_fidelity --validation 30`: fit on 70 photos, measure on the other 30 and their mirror
images (centre crops); the evaluation photos are never read.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
from PIL import Image

from benchmarks.int8_fidelity import validation_indices
from export.images import load_image
from export.weights import load_model
from quantize.calibration import FolderSource
from quantize.rounding import RoundingSettings, round_layer, to_float
from studies.splits import Cells, logit_rms, logits, replace_weights, split_study_parser, study_splits

CORNERS = ((16, 16), (0, 0), (32, 0), (0, 32), (32, 32))  # (left, top) in the 256x256 image; centre first


def fit_paths(calib, loaded, seed: int, count: int = 30) -> tuple[list, list]:
    """The 70 fit photos of draw `seed`, in the order `validation_views` uses, and the photos outside the draw."""
    draw = FolderSource(calib, loaded.preprocess, size=100, seed=seed)
    fit, _ = validation_indices(len(draw.chosen), count, seed)
    return [draw.chosen[i] for i in fit], list(draw.unused)


def views_of(paths: list, preprocess, views: int) -> np.ndarray:
    """NCHW: each photo's first `views` of centre, four corners, then the mirrors of those five."""
    whole = dataclasses.replace(preprocess, crop=256)  # the 256x256 image `preprocess` centre-crops
    normalise = dataclasses.replace(preprocess, resize=(224, 224))  # a 224 crop as is
    out = []
    for path in paths:
        image = whole.resize_and_crop(load_image(path))
        crops = [image.crop((x, y, x + 224, y + 224)) for x, y in CORNERS]
        crops += [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]
        for crop in crops[:views]:
            out.append(normalise.apply(crop))
    return np.stack(out)


def round_weights(model, images: np.ndarray, damping_divisor: int) -> None:
    """GPTQ in place, as `learned_rounding`, with the automatic damping of count / `damping_divisor` positions."""
    settings = RoundingSettings(method="gptq")
    replace_weights(  # count only sets the damping
        model, images, lambda w, h, count: to_float(w, round_layer(w, h, count // damping_divisor, settings))
    )


def main() -> None:
    parser = split_study_parser(__doc__)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--damping-as-photos", action="store_true", help="also: damping from the photo count")
    parser.add_argument("--extra-photos", type=int, nargs="*", default=[], help="diagnostic: + N outside photos")
    args = parser.parse_args()
    loaded = load_model(args.weights)
    assert loaded.preprocess.resize == (256, 256) and loaded.preprocess.crop == 224, "Caffe preprocessing only"
    cells = Cells()
    for split in study_splits(loaded, args):
        paths, outside = fit_paths(args.calib, loaded, split.seed)
        runs = [(views, 0) for views in args.views] + [(1, extra) for extra in args.extra_photos]
        for views, extra in runs:
            images = views_of(paths, loaded.preprocess, views)
            if views == 1:
                assert np.array_equal(images, split.fit.array), "the centre view must be the fit photos"
            if extra:
                images = np.concatenate([images, views_of(outside[:extra], loaded.preprocess, 1)])
            for divisor in sorted({1, views if args.damping_as_photos else 1}):
                model = copy.deepcopy(loaded.model).eval()
                started = time.perf_counter()
                round_weights(model, images, divisor)
                seconds = time.perf_counter() - started
                rms = logit_rms(logits(model, split.inputs), split.reference)
                cells.add(seed=split.seed, views=views, outside_photos=extra, damping_from=len(images) // divisor,
                          logit_rms=rms, fit_seconds=round(seconds, 1))  # fmt: skip
    cells.write(args.out)


if __name__ == "__main__":
    main()
