"""Throughput, latency and memory benchmark of ser (``python benchmarks/run.py``)."""
