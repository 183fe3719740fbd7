"""The project's own ``workers`` module."""

MARKER = "the project's workers"
