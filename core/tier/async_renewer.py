"""Keeping a lease alive while an awaited computation runs: one task per held lease.

The blocking side renews every held lease from one thread
(:class:`~tiercel.core.tier.renewer.LeaseRenewer`); in an event loop a task
per lease costs nothing and needs no lock. The task renews every
``renew_interval`` and stops on its own once the lease is lost: the holder
then finds out at write-back, where fencing rejects its value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from tiercel.core.errors import TierUnavailable
from tiercel.core.tier.async_leases import AsyncLeases
from tiercel.core.tier.lease_calls import Lease

__all__ = ["renewing"]

log = logging.getLogger("tiercel.renewer")


async def _renew_until_lost(leases: AsyncLeases, lease: Lease) -> None:
    while True:
        await asyncio.sleep(leases.renew_interval)
        try:
            if not await leases.renew(lease):
                log.debug("lease of %s lost while computing", lease.key)
                return
        except TierUnavailable:
            # The lease may still be ours; try again next period.
            log.debug("renewing the lease of %s failed", lease.key, exc_info=True)


@contextlib.asynccontextmanager
async def renewing(leases: AsyncLeases, lease: Lease) -> AsyncIterator[Lease]:
    """``async with renewing(leases, lease):`` renews ``lease`` while the body runs."""
    task = asyncio.get_running_loop().create_task(_renew_until_lost(leases, lease))
    try:
        yield lease
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
