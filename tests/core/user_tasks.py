"""A deployment's own task module, as TIERCEL_TASK_MODULES names it (used by a test)."""

from tiercel.tasks import cached_task


@cached_task(ttl=60)
def triple(n: int) -> int:
    """Three times ``n``."""
    return 3 * n
