"""Benchmarks of gradcam_repro against simple references; run `python -m benchmarks.bench` (or `make bench`)."""
