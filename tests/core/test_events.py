"""The invalidation channel's vocabulary: one module encodes and decodes every message."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tiercel
from tiercel.core.tier import events
from tiercel.core.tier.events import (
    ChannelProbe,
    Cleared,
    Done,
    Failed,
    GenerationMoved,
    InspectRequested,
    Invalidated,
    SweepRequested,
    TagInvalidated,
    Unknown,
    decode,
)

ROOT = Path(tiercel.__file__).resolve().parent

# The wire format other processes of a running fleet speak: pinned, byte for byte.
WIRE = [
    (Done("t:v:fn:1:{abc}"), "d|t:v:fn:1:{abc}"),
    (Failed("t:v:fn:1:{abc}"), "f|t:v:fn:1:{abc}"),
    (Invalidated("t:v:fn:1:{abc}"), "i|t:v:fn:1:{abc}"),
    (TagInvalidated("reports"), "t|reports"),
    (GenerationMoved("pkg.fn", 7), "g|pkg.fn|7"),
    (GenerationMoved("scope|with|bars", 8), "g|scope|with|bars|8"),
    (Cleared(), "c|"),
    (SweepRequested(), "s|"),
    (InspectRequested("0f" * 16, "t:v:fn:1:{abc}"), f"q|{'0f' * 16}|t:v:fn:1:{{abc}}"),
    (InspectRequested("r1", "key|with|bars"), "q|r1|key|with|bars"),
    (ChannelProbe(1764770000.25), "p|1764770000.25"),
    (ChannelProbe(1764770000.123456), "p|1764770000.123456"),
]


@pytest.mark.parametrize(("event", "message"), WIRE, ids=[m for _, m in WIRE])
def test_each_event_encodes_to_its_wire_message_and_back(event: events.Event, message: str) -> None:
    assert event.encode() == message
    assert decode(message) == event
    assert decode(message.encode()) == event


def test_every_kind_is_pinned() -> None:
    kinds = {type(event) for event, _ in WIRE}
    assert kinds == set(events.Event.__args__) - {Unknown}
    assert sorted(cls.KIND for cls in kinds) == ["c", "d", "f", "g", "i", "p", "q", "s", "t"]


_text = st.text(st.characters(blacklist_categories=("Cs",)))


@given(key=_text)
def test_keyed_events_round_trip_any_key(key: str) -> None:
    for cls in (Done, Failed, Invalidated, TagInvalidated):
        event = cls(key)
        assert decode(event.encode()) == event
        assert decode(event.encode().encode("utf-8")) == event


@given(scope=_text, generation=st.integers())
def test_generation_round_trips_any_scope(scope: str, generation: int) -> None:
    event = GenerationMoved(scope, generation)
    assert decode(event.encode()) == event


@given(reply=st.text(alphabet="0123456789abcdef", min_size=1), key=_text)
def test_inspect_requests_round_trip_any_key(reply: str, key: str) -> None:
    event = InspectRequested(reply, key)
    assert decode(event.encode()) == event


@given(sent=st.floats(allow_nan=False, allow_infinity=False))
def test_probes_round_trip_every_finite_send_time_exactly(sent: float) -> None:
    event = ChannelProbe(sent)
    assert decode(event.encode()) == event
    assert decode(event.encode().encode()) == event


@pytest.mark.parametrize("sent", [float("nan"), float("inf"), float("-inf")])
def test_a_probe_without_a_finite_send_time_is_refused(sent: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        ChannelProbe(sent).encode()


def test_a_probe_measures_its_delay_never_below_zero() -> None:
    probe = ChannelProbe(100.0)
    assert probe.delay(100.25) == 0.25
    assert probe.delay(99.0) == 0.0, "a receiver's clock behind the sender's reads as 0"


def test_a_reply_id_holding_the_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="reply id"):
        InspectRequested("a|b", "k").encode()


def test_events_are_frozen_values() -> None:
    event = Done("k")
    with pytest.raises(AttributeError):
        event.key = "other"  # type: ignore[misc]
    assert event == Done("k") and hash(event) == hash(Done("k"))
    assert Done("k") != Invalidated("k")


@pytest.mark.parametrize(
    "message",
    [
        "",
        "garbage",
        "x|what",
        "D|upper",
        "|no-kind",
        "dd|two-letters",
        "g|nogeneration",
        "g|7",
        "g|scope|notanumber",
        "g|scope|",
        "g|scope|" + "9" * 5000,  # past int()'s digit limit
        "q|no-key-separator",
        "q||no-reply-id",
        "p|",
        "p|soon",
        "p|nan",
        "p|inf",
        "p|-inf",
        "p|1.5|extra",
        "p|" + "1" * 100,  # longer than any send time
    ],
)
def test_garbled_messages_decode_to_unknown(message: str) -> None:
    assert decode(message) == Unknown(message)
    assert decode(message).encode() == message


def test_undecodable_bytes_are_replaced_not_raised() -> None:
    assert decode(b"i|\xff\xfe") == Invalidated("\ufffd\ufffd")
    assert decode(b"\xff") == Unknown("\ufffd")


def test_bare_events_ignore_what_follows() -> None:
    assert decode("c|anything") == Cleared()
    assert decode("s|x|y") == SweepRequested()


@given(st.one_of(st.text(), st.binary()))
def test_decode_never_raises(message: str | bytes) -> None:
    assert isinstance(decode(message), events.Event)


# A message literal outside events.py: "d|...", f"i|{key}", "g|" and the like.
_LITERAL = re.compile(r"^[a-z]\|")


def test_no_message_is_spelled_outside_the_events_module() -> None:
    for folder in ("core", "tasks", "workers"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "core" / "tier" / "events.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.JoinedStr) and node.values:
                    node = node.values[0]
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and _LITERAL.match(node.value)
                ):
                    pytest.fail(f"{path}:{node.lineno} spells a channel message: use events")
