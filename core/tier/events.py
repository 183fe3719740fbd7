"""The invalidation channel's vocabulary: every message, encoded and decoded here only.

Each namespace has one pub/sub channel
(:func:`tiercel.core.encoding.prefixes.channel_name`), heard by every
process's :class:`~tiercel.core.tier.notifier.Notifier`. A message is one
string, ``<kind>|<body>``:

``d|<key>``                :class:`Done`: a computation of ``key`` finished (stored or
                           not): re-check it; a local copy of it is outdated
``f|<key>``                :class:`Failed`: it failed; ``LeaseManager.read_failure`` says why
``i|<key>``                :class:`Invalidated`: ``key`` was invalidated: drop local copies
``t|<tag>``                :class:`TagInvalidated`: every key tagged ``tag`` was invalidated
``g|<scope>|<generation>`` :class:`GenerationMoved`: a generation was bumped (the scope
                           may hold ``|``: the number follows the last one)
``c|``                     :class:`Cleared`: the namespace was cleared
``s|``                     :class:`SweepRequested`: drop expired local entries now (beat's
                           fleet-wide sweep)
``q|<reply>|<key>``        :class:`InspectRequested`: say whether your local levels hold
                           ``key``, on the reply list ``reply`` names (``tiercel cache
                           inspect``; the reply id holds no ``|``, the key may)
``p|<sent>``               :class:`ChannelProbe`: a delivery probe, ``sent`` the publisher's
                           ``time.time()`` (a float, in ``repr`` form); each listener that
                           hears it records ``now - sent`` as its delivery latency

This is a wire format between the processes of a running fleet, old and new
versions alike: change it only together with a way to migrate. The Lua
scripts that publish (write-back, failure, invalidation, freeing an abandoned
lease) receive the message as an argument built here.

Each event is a frozen dataclass whose :meth:`encode` is its message;
:func:`decode` is the inverse and never raises: a message that is none of the
above is :class:`Unknown`.

``p|`` came after the others: a process from before it decodes a probe to
:class:`Unknown`, counts it as malformed and ignores it, which is all the
migration it needs (beat's aggregation sends one probe a period, so an old
process's ``malformed`` count grows by one a period until it is upgraded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

__all__ = [
    "ChannelProbe",
    "Cleared",
    "Done",
    "Event",
    "Failed",
    "GenerationMoved",
    "InspectRequested",
    "Invalidated",
    "SweepRequested",
    "TagInvalidated",
    "Unknown",
    "decode",
]

_SEP: Final = "|"
#: Longest probe body decoded (a float's ``repr`` is at most 24 characters).
_MAX_PROBE_BODY: Final = 64


@dataclass(frozen=True, slots=True)
class Done:
    """A computation of ``key`` finished, its value stored or not: re-check it."""

    key: str
    KIND: ClassVar[str] = "d"

    def encode(self) -> str:
        """The message on the wire."""
        return f"{self.KIND}{_SEP}{self.key}"


@dataclass(frozen=True, slots=True)
class Failed:
    """The computation of ``key`` failed; its failure record says why."""

    key: str
    KIND: ClassVar[str] = "f"

    def encode(self) -> str:
        """The message on the wire."""
        return f"{self.KIND}{_SEP}{self.key}"


@dataclass(frozen=True, slots=True)
class Invalidated:
    """``key`` was invalidated: every process drops its local copies."""

    key: str
    KIND: ClassVar[str] = "i"

    def encode(self) -> str:
        """The message on the wire."""
        return f"{self.KIND}{_SEP}{self.key}"


@dataclass(frozen=True, slots=True)
class TagInvalidated:
    """Every key tagged ``tag`` was invalidated."""

    tag: str
    KIND: ClassVar[str] = "t"

    def encode(self) -> str:
        """The message on the wire."""
        return f"{self.KIND}{_SEP}{self.tag}"


@dataclass(frozen=True, slots=True)
class GenerationMoved:
    """The generation counter of ``scope`` moved to ``generation``."""

    scope: str
    generation: int
    KIND: ClassVar[str] = "g"

    def encode(self) -> str:
        """The message on the wire."""
        return f"{self.KIND}{_SEP}{self.scope}{_SEP}{self.generation}"


@dataclass(frozen=True, slots=True)
class Cleared:
    """The whole namespace was cleared."""

    KIND: ClassVar[str] = "c"

    def encode(self) -> str:
        """The message on the wire."""
        return f"{self.KIND}{_SEP}"


@dataclass(frozen=True, slots=True)
class SweepRequested:
    """Every process, prefork children included, should sweep its local levels now."""

    KIND: ClassVar[str] = "s"

    def encode(self) -> str:
        """The message on the wire."""
        return f"{self.KIND}{_SEP}"


@dataclass(frozen=True, slots=True)
class InspectRequested:
    """Every process, prefork children included, should say whether its local levels
    hold ``key``, on the reply list named by ``reply``."""

    reply: str
    key: str
    KIND: ClassVar[str] = "q"

    def encode(self) -> str:
        """The message on the wire."""
        if _SEP in self.reply:
            raise ValueError(f"a reply id holds no {_SEP!r}: {self.reply!r}")
        return f"{self.KIND}{_SEP}{self.reply}{_SEP}{self.key}"


@dataclass(frozen=True, slots=True)
class ChannelProbe:
    """A delivery probe: ``sent`` is the publisher's wall clock (``time.time()``) at publish.

    It travels the channel, the subscription connection and the listener thread
    that carry ``i|``, ``t|`` and ``g|``, in order with them, so the delay a
    listener measures (:meth:`delay`) is the delay an invalidation published at
    that moment would have met before the listener acted on it. The two clocks
    are two hosts' when publisher and listener run on different nodes: their
    skew is part of the figure (a listener's clock behind the publisher's makes
    it read low, at worst 0; one ahead, high).
    """

    sent: float
    KIND: ClassVar[str] = "p"

    def encode(self) -> str:
        """The message on the wire (``repr`` keeps every digit of the float)."""
        if not math.isfinite(self.sent):
            raise ValueError(f"a probe's send time is a finite number, got {self.sent!r}")
        return f"{self.KIND}{_SEP}{self.sent!r}"

    def delay(self, now: float) -> float:
        """Seconds from the send to ``now`` (the listener's ``time.time()``); never below 0,
        since a receiver's clock may be behind the sender's."""
        return max(0.0, now - self.sent)


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message that is none of the above (garbled, or from a newer version): ignore it."""

    text: str

    def encode(self) -> str:
        """The message as it came."""
        return self.text


#: Every event :func:`decode` answers.
Event: TypeAlias = (
    Done
    | Failed
    | Invalidated
    | TagInvalidated
    | GenerationMoved
    | Cleared
    | SweepRequested
    | InspectRequested
    | ChannelProbe
    | Unknown
)

_KEYED: Final[dict[str, type[Done | Failed | Invalidated | TagInvalidated]]] = {
    cls.KIND: cls for cls in (Done, Failed, Invalidated, TagInvalidated)
}
_BARE: Final[dict[str, Cleared | SweepRequested]] = {
    Cleared.KIND: Cleared(),
    SweepRequested.KIND: SweepRequested(),
}


def decode(message: str | bytes) -> Event:
    """The event a channel message carries; :class:`Unknown` for anything else.

    Never raises: bytes that are not UTF-8 are decoded with replacement
    characters. A bare event (``c|``, ``s|``) ignores what follows its ``|``.
    """
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    kind, sep, body = text.partition(_SEP)
    if not sep:
        return Unknown(text)
    keyed = _KEYED.get(kind)
    if keyed is not None:
        return keyed(body)
    bare = _BARE.get(kind)
    if bare is not None:
        return bare
    if kind == InspectRequested.KIND:
        reply, sep, key = body.partition(_SEP)
        if sep and reply:
            return InspectRequested(reply, key)
        return Unknown(text)
    if kind == ChannelProbe.KIND:
        probe = _probe(body)
        return probe if probe is not None else Unknown(text)
    if kind == GenerationMoved.KIND:
        scope, sep, number = body.rpartition(_SEP)
        if sep:
            try:
                return GenerationMoved(scope, int(number))
            except ValueError:
                pass
    return Unknown(text)


def _probe(body: str) -> ChannelProbe | None:
    """The probe a ``p|`` body names: a finite number (no NaN, no infinity), else None."""
    if len(body) > _MAX_PROBE_BODY:
        return None
    try:
        sent = float(body)
    except ValueError:
        return None
    return ChannelProbe(sent) if math.isfinite(sent) else None
