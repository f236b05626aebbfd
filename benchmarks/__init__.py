"""Measuring the exported GoogLeNet: parameter and multiply-add counts, later latency and accuracy."""
