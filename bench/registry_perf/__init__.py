"""The registry benchmark's parts; ``python -m bench.registry_bench`` runs them and writes its section of BENCHMARKS.md."""
