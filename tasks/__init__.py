"""tiercel tasks: the cached-task API and the tasks the fleet runs."""

from tiercel.tasks.cached import CachedTask, cached_task
from tiercel.tasks.results import CachedResult

__all__ = ["CachedResult", "CachedTask", "cached_task"]
