"""Helpers shared by the benchmarks."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import jax


@contextmanager
def compilation_cache() -> Iterator[None]:
    """A JAX compilation cache for the with-block's lifetime. A benchmark's runs differ only in
    what XLA never sees (seeds, embedding optimizers, data), so every run after the first
    reuses the first's compiled steps instead of recompiling them."""
    with tempfile.TemporaryDirectory(prefix="jax-cache-") as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        yield
