"""Helpers for the benchmark scripts in the repository's bench/ folder."""
