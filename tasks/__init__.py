"""tiercel tasks: the cached-task API and the tasks the fleet runs."""

from tasks.cached import CachedTask, cached_task
from tasks.results import CachedResult

__all__ = ["CachedResult", "CachedTask", "cached_task"]
