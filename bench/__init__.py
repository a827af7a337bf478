"""Benchmarks: ``python -m bench.ingest`` and ``python -m bench.pipeline`` (see bench/README.md)."""
