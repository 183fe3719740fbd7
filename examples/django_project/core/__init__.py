"""The project's own ``core`` app: the name tiercel once took, and no longer does."""
