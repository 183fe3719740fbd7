"""Standalone benchmarks of tiercel (run each with ``python -m bench.<name>``)."""
