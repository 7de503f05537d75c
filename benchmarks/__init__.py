"""Benchmark scripts (every figure the README quotes) and the shapes dataset generator the tests reuse."""
