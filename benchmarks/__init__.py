"""Benchmarks, each runnable as ``python -m benchmarks.NAME``; the last stdout line is JSON."""
