"""Benchmarks importable by the CLI (`neuroattn bench ...`); each writes its table as JSON under an output folder."""
