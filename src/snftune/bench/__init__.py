"""Benchmark layer: suites, result tables and figures."""
