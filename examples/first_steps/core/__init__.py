"""The project's own ``core`` package (a Django-style app name tiercel must not take)."""

MARKER = "the project's core"
