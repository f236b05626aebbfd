"""Int8 weights with channels equalized and the most sensitive layers in float16 (`learned-mixed`), on the
validation splits: weights-only logit error.

    python -m studies.mixed_weights_study --weights ../shared/weights/bvlc_googlenet.onnx \\
        --calib ../shared/data/imagenet-sample --seeds 0 1 2 --out mixed.json

Why: LiteRT folds only DEQUANTIZE, which is affine, so TFLite cannot hold the 8-bit palette that lowered ONNX's
weight error by a fifth (session 17). Two affine ways at the same error: rescale channels between layers so
each int8 row's grid fits its weights (`quantize.equalization`), and spend the file's slack under 27% of FP32 on
float16 for the layers whose rounding costs the logits most per byte (`quantize.mixed_precision`).
Split as `benchmarks.int8_fidelity --validation 30`: fit on 70 photos, measure on the other 30 and their mirror
images; the evaluation photos are never read.
"""

from __future__ import annotations

import time
from dataclasses import replace

from quantize.tflite_int8 import recipe
from quantize.tflite_quant import fitted_weights
from studies.splits import Cells, logit_rms, logits, split_study_parser, study_splits

VARIANTS = {  # the weights each variant stores: `learned-mixed` with its refinements switched on or off
    "int8": {"equalize": False, "float16_layers": False},
    "equalized": {"equalize": True, "float16_layers": False},
    "float16": {"equalize": False, "float16_layers": True},
    "equalized+float16": {"equalize": True, "float16_layers": True},
}


def main() -> None:
    parser = split_study_parser(__doc__)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    from export.weights import load_model

    loaded = load_model(args.weights)
    cells = Cells()
    for split in study_splits(loaded, args):
        for variant in args.variants:
            started = time.perf_counter()
            config = replace(recipe("learned-mixed"), **VARIANTS[variant])
            model, record = fitted_weights(loaded.model, split.fit.array, config)
            seconds = time.perf_counter() - started
            rms = logit_rms(logits(model.eval(), split.inputs), split.reference)
            cells.add(seed=split.seed, variant=variant, logit_rms=round(rms, 5), fit_seconds=round(seconds, 1),
                      float16=record.get("float16", {}).get("layers", []))  # fmt: skip
    cells.write(args.out)


if __name__ == "__main__":
    main()
