"""Why `learned-palette` is ONNX only: LiteRT's latency on a palettized TFLite graph against the FP32 one.

    python -m studies.palette_litert_study artifacts/googlenet.tflite --out palette-litert.json

Every CONV_2D/FULLY_CONNECTED kernel of the FP32 flatbuffer is replaced by a uint8 index tensor read through
CAST (to int32) -> GATHER (a 256-level codebook) -> MUL (the channel scales), the graph ONNX Runtime folds into
float weights at load. LiteRT folds nothing: it gathers every weight on every run, and convolutions whose filter
is computed at run time leave the XNNPACK delegate. The levels here are the kernels' quantiles (accuracy is not
the question, only where the time goes); runs interleaved, median of each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PALETTED_OPS = ("CONV_2D", "FULLY_CONNECTED")


def palettized(flatbuffer: bytes, smallest: int = 2000) -> tuple[bytes, int]:
    """`flatbuffer` with every float kernel of at least `smallest` values behind CAST/GATHER/MUL."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from quantize.tflite_weights import constant_kernels

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]

    def opcode(code: int) -> int:
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
        model.operatorCodes.append(entry)
        return len(model.operatorCodes) - 1

    def tensor(name: bytes, shape, kind: int, data: np.ndarray | None = None) -> int:
        buffer = 0
        if data is not None:
            stored = schema.BufferT()
            stored.data = np.frombuffer(data.tobytes(), np.uint8)
            model.buffers.append(stored)
            buffer = len(model.buffers) - 1
        entry = schema.TensorT()
        entry.name, entry.shape, entry.type, entry.buffer = name, list(shape), kind, buffer
        graph.tensors.append(entry)
        return len(graph.tensors) - 1

    def operator(code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options=None):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        return op

    cast, gather, mul = (opcode(getattr(schema.BuiltinOperator, n)) for n in ("CAST", "GATHER", "MUL"))
    unpack, count = [], 0
    for op, kernel, weight in constant_kernels(model, PALETTED_OPS):
        if weight.size < smallest:
            continue
        rows = weight.reshape(len(weight), -1)
        scale = (np.abs(rows).max(axis=1) / 127).astype(np.float32)
        scale[scale == 0] = 1
        levels = np.quantile(rows / scale[:, None], (np.arange(256) + 0.5) / 256).astype(np.float32)
        index = np.searchsorted((levels[1:] + levels[:-1]) / 2, rows / scale[:, None]).astype(np.uint8)
        model.buffers[kernel.buffer].data = None
        name = kernel.name
        stored = tensor(name + b"/index", weight.shape, schema.TensorType.UINT8, index.reshape(weight.shape))
        wide = tensor(name + b"/index32", weight.shape, schema.TensorType.INT32)
        codebook = tensor(name + b"/codebook", [256], schema.TensorType.FLOAT32, levels)
        gathered = tensor(name + b"/levels", weight.shape, schema.TensorType.FLOAT32)
        scales = tensor(name + b"/scale", [len(weight)] + [1] * (weight.ndim - 1), schema.TensorType.FLOAT32, scale)
        gather_options = schema.GatherOptionsT()
        gather_options.axis, gather_options.batchDims = 0, 0
        mul_options = schema.MulOptionsT()
        unpack += [
            operator(cast, [stored], [wide]),
            operator(gather, [codebook, wide], [gathered], schema.BuiltinOptions.GatherOptions, gather_options),
            operator(mul, [gathered, scales], [op.inputs[1]], schema.BuiltinOptions.MulOptions, mul_options),
        ]
        count += 1
    graph.operators[:0] = unpack
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), count


def median_ms(paths: dict[str, bytes], threads: int, runs: int, rounds: int) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter

    image = np.random.default_rng(0).normal(scale=50, size=(1, 224, 224, 3)).astype(np.float32)
    interpreters = {}
    for name, content in paths.items():
        interpreter = Interpreter(model_content=content, num_threads=threads)
        interpreter.allocate_tensors()
        interpreters[name] = interpreter
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):  # interleaved, so a busy moment costs both alike
        for name, interpreter in interpreters.items():
            index = interpreter.get_input_details()[0]["index"]
            for _ in range(runs):
                started = time.perf_counter()
                interpreter.set_tensor(index, image)
                interpreter.invoke()
                times[name].append(time.perf_counter() - started)
    return {name: round(1000 * float(np.median(values)), 2) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="an FP32 googlenet.tflite")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fp32 = args.fp32.read_bytes()
    content, count = palettized(fp32)
    sizes = {"fp32": len(fp32), "palette": len(content)}
    report = {"fp32": str(args.fp32), "kernels_palettized": count, "bytes": sizes}
    for threads in args.threads:
        report[f"median_ms_{threads}_threads"] = median_ms({"fp32": fp32, "palette": content}, threads, 10, 3)
        print(threads, report[f"median_ms_{threads}_threads"], flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
