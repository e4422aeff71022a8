"""The format benchmark's parts; ``python -m bench.run`` runs them and writes the format section of BENCHMARKS.md."""
