"""PublishOptions: how a delay stretches the in-flight marker and the lost-message wait."""

from __future__ import annotations

import datetime

import pytest

from tiercel.tasks.publishing import NO_OPTIONS, PublishOptions


def test_no_delay_keeps_the_settings() -> None:
    assert NO_OPTIONS.delay() == 0.0
    assert NO_OPTIONS.inflight_ttl(120.0) == 120.0
    assert NO_OPTIONS.republish_after(60.0) == 60.0
    assert NO_OPTIONS.merged(None) == {}


def test_a_countdown_adds_its_seconds() -> None:
    publish = PublishOptions.of({"countdown": 30, "queue": "q"})
    assert publish.inflight_ttl(120.0) == 150.0
    assert publish.republish_after(60.0) == 90.0
    assert publish.republish_after(0.0) == 0.0, "re-publishing switched off stays off"
    assert PublishOptions.of({"countdown": -5}).delay() == 0.0


@pytest.mark.parametrize("tz", [datetime.UTC, None])
def test_an_eta_adds_the_time_until_it(tz: datetime.tzinfo | None) -> None:
    eta = datetime.datetime.now(tz) + datetime.timedelta(seconds=40)
    assert 39.0 < PublishOptions.of({"eta": eta}).delay() <= 40.0
    past = datetime.datetime.now(tz) - datetime.timedelta(seconds=40)
    assert PublishOptions.of({"eta": past}).delay() == 0.0


def test_tiercel_headers_join_the_users_headers() -> None:
    publish = PublishOptions.of({"headers": {"tenant": "a"}, "priority": 3})
    assert publish.merged({"tiercel_refresh": True}) == {
        "headers": {"tenant": "a", "tiercel_refresh": True},
        "priority": 3,
    }
    assert publish.merged(None) == {"headers": {"tenant": "a"}, "priority": 3}
