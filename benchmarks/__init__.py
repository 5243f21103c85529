"""Benchmarks of the hot paths, run by ``make bench`` (``python -m benchmarks``).

Each run measures the gateway and a reference (nginx for GETs, a plain Python
write+fsync+rename loop for PUTs) side by side on the same machine, disk and
load generator, and reports ratios. See benchmarks/README.md and
docs/performance.md.
"""
