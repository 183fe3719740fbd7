"""Metrics: the per-process registry, mergeable sketches, snapshots and the monitor."""
