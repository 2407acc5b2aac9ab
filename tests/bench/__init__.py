"""Benchmarks and chaos runs on the test bed (`make bench`, `make chaos`); see BENCHMARKS.md."""
