"""The feed's pacing: the rate limit's token bucket, the schedule window, the options."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from producer.pacing import Pacer, Window, parse_rate
from worker.errors import ConfigurationError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_objects_per_second_are_let_through_at_the_rate_and_never_in_a_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(objects_per_second=50, clock=clock)
    sent = 0
    for _ in range(100):  # ten seconds in steps of 0.1 s, always 1,000 objects waiting
        allowed = pacer.allowance([1] * 1000)
        pacer.spend([1] * allowed)
        sent += allowed
        clock.now += 0.1
    assert 500 <= sent <= 550  # 50/s for 10 s, plus at most the first second's allowance
    clock.now += 3600  # an hour of waiting (a full queue) buys no burst
    assert pacer.allowance([1] * 1000) == 50


def test_bytes_per_second_count_each_object_by_its_size() -> None:
    clock = FakeClock()
    pacer = Pacer(bytes_per_second=1000, clock=clock)
    assert pacer.allowance([300, 300, 300, 300]) == 3
    pacer.spend([300, 300, 300])
    assert pacer.allowance([300]) == 0  # 100 bytes left
    clock.now += 0.2
    assert pacer.allowance([300]) == 1


def test_an_object_larger_than_a_second_of_bytes_goes_alone_when_the_bucket_is_full() -> None:
    clock = FakeClock()
    pacer = Pacer(bytes_per_second=1000, clock=clock)
    assert pacer.allowance([5000, 10]) == 1
    pacer.spend([5000])
    assert pacer.allowance([10]) == 0  # it is paid for over the next seconds
    clock.now += 4.1
    assert pacer.allowance([10]) == 1


def test_no_limit_lets_everything_through() -> None:
    assert Pacer().allowance([10**9] * 7) == 7


def _at(text: str, zone: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_a_window_over_midnight_in_its_own_time_zone() -> None:
    window = Window.parse("20:00-06:00", "Europe/Berlin")
    assert str(window) == "20:00-06:00 Europe/Berlin"
    assert window.is_open(_at("2026-12-07 21:30", "Europe/Berlin"))
    assert window.is_open(_at("2026-12-08 05:59", "Europe/Berlin"))
    noon = _at("2026-12-07 12:00", "Europe/Berlin")
    assert not window.is_open(noon)
    assert window.opens_in(noon) == 8 * 3600
    # 19:30 UTC is 20:30 in Berlin in winter: open there, though not by UTC's clock
    assert window.is_open(_at("2026-12-07 19:30", "UTC"))
    assert not Window.parse("20:00-06:00").is_open(_at("2026-12-07 19:30", "UTC"))


def test_a_window_inside_one_day_and_across_a_daylight_saving_change() -> None:
    window = Window.parse("01:00-04:00", "Europe/Berlin")
    # the night clocks go back (2026-10-25, 03:00 -> 02:00): still open at 03:30
    assert window.is_open(_at("2026-10-25 03:30", "Europe/Berlin"))
    assert not window.is_open(_at("2026-10-25 04:00", "Europe/Berlin"))


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("20-06", "UTC"),
        ("25:00-06:00", "UTC"),
        ("06:00-06:00", "UTC"),
        ("20:00-06:00", "Mars/Base"),
    ],
)
def test_bad_windows_are_refused_with_what_to_give(text: str, zone: str) -> None:
    with pytest.raises(ConfigurationError, match=r"window|time zone"):
        Window.parse(text, zone)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50", (50, 0)), ("50/s", (50, 0)), ("2.5/s", (2.5, 0)), ("200MB/s", (0, 200e6)),
     ("1.5GB/s", (0, 1.5e9)), ("100 kB/s", (0, 100e3))],
)  # fmt: skip
def test_rates_in_objects_or_bytes(text: str, expected: tuple[float, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-5", "fast", "5 fish/s", "10MiB/s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="objects per second"):
        parse_rate(text)
