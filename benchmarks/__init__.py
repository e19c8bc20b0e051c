"""The performance harness: ``python -m benchmarks [part ...]`` (see README.md)."""
