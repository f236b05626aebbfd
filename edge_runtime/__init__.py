"""The runtime core: what the device bundle ships and every other layer runs artifacts with.

Needs only numpy, onnxruntime and ai_edge_litert (plus the standard library) and imports nothing from
`export`, `quantize` or `benchmarks`. The device bundle copies `device_runner` (as `run.py`) with the modules
it imports (`benchmarks.bundle.SHIPPED_BESIDE_RUN`), and `android_bench` (as `android/run_android.py`) with its
own (`ANDROID_BESIDE_RUN`, standard library only); they run there on Python >= 3.9.
"""
