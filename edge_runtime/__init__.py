"""The runtime core: what the device bundle ships and every other layer runs artifacts with.

Needs only numpy, onnxruntime and ai_edge_litert (plus the standard library) and imports nothing from
`export`, `quantize` or `benchmarks`; `device_runner` (as `run.py`), `formats`, `errors`, `kernel_coverage`,
`ceiling` and `android_bench` are copied into the device bundle as they are and run there on Python >= 3.9.
"""
