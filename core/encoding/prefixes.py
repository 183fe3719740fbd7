"""Every Redis key prefix tiercel uses, in one place.

Keys are laid out as ``{namespace}:{kind}:...``. Keys that one Lua script or
MULTI touches together share a Redis Cluster hash tag: the part between ``{``
and ``}`` (see :func:`tiercel.core.encoding.keys.hash_tag`).
"""

from __future__ import annotations

#: Cached value envelopes.
VALUE = "v"
#: Lease held by the one computation of a key.
LEASE = "lease"
#: Monotonic fencing counter of a key's leases.
FENCE = "fence"
#: Per-key invalidation counter (bumped by every invalidation of the key).
EPOCH = "epoch"
#: Submit-side in-flight marker: which task id computes a key.
INFLIGHT = "inflight"
#: Short-lived record of a key's failed computation (type and message, JSON).
FAILURE = "err"
#: A key's last fate (written with its expiry, invalidated, failed): why a later miss missed.
HISTORY = "hist"
#: Generation counter of a function (bumped by ``invalidate_all``) or of a tag.
GENERATION = "gen"
#: Marks that a waiting client re-published a key's task recently (one per period).
REPUBLISH = "republish"
#: Set of value keys that carry a tag.
TAG_INDEX = "tag"
#: Suffix of a tag index renamed aside while :meth:`RedisTier.invalidate_tag` drains it.
TAG_DRAIN = "drain"
#: Pub/sub channel of invalidation and completion messages.
CHANNEL = "events"
#: Per-process metric snapshots.
METRICS = "metrics"
#: Overlap guard of periodic tasks.
PERIODIC_LOCK = "periodic"
#: Reply lists of ``tiercel cache inspect``'s requests to every process (short-lived).
INSPECT = "inspect"

DEFAULT_NAMESPACE = "tiercel"


def channel_name(namespace: str) -> str:
    """The one pub/sub channel of ``namespace``: ``{namespace}:events``."""
    return f"{namespace}:{CHANNEL}"


def inspect_reply_key(namespace: str, reply: str) -> str:
    """The list every process pushes its answer to inspect request ``reply`` onto."""
    return f"{namespace}:{INSPECT}:{reply}"
