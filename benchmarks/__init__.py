"""Code only the benchmarks (scripts/bench_*.py) and their tests use."""
