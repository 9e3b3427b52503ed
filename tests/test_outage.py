"""The outage clock of a Kafka worker: pure, with the time passed in."""

from __future__ import annotations

from service.sources.kafka.outage import OutageClock


def _ticks(clock: OutageClock, start: float, end: float, step: float = 0.25) -> None:
    now = start
    while now <= end + 1e-9:
        clock.tick(now)
        now += step


def test_an_outage_longer_than_the_bound_is_exceeded_and_one_within_it_is_not() -> None:
    """Ticks every 0.25 s: 10 s away with a 10.5 s bound is within it, 11 s is past it."""
    clock = OutageClock(10.5)
    _ticks(clock, 0, 1)
    assert clock.failed()
    _ticks(clock, 1, 11)
    assert not clock.exceeded()
    _ticks(clock, 11, 12)
    assert clock.exceeded()


def test_time_the_process_was_stopped_does_not_count() -> None:
    """A 60 s gap between two ticks (SIGSTOP) adds nothing; the loop's own time does."""
    clock = OutageClock(5)
    clock.tick(0)
    clock.failed()
    _ticks(clock, 0, 2)
    clock.tick(62)
    assert clock.away_for == 2
    _ticks(clock, 62, 65.5)
    assert clock.exceeded()


def test_an_answer_ends_the_outage_and_the_next_failure_starts_anew() -> None:
    """`answered` returns how long it lasted; a later failure starts from zero, once."""
    clock = OutageClock(3)
    clock.tick(0)
    assert clock.failed()
    assert not clock.failed()
    _ticks(clock, 0, 2)
    assert clock.answered() == 2
    assert clock.answered() is None
    _ticks(clock, 2, 10)
    assert clock.failed()
    _ticks(clock, 10, 12)
    assert not clock.exceeded()


def test_a_bound_of_zero_waits_forever() -> None:
    """kafka_unavailable_timeout = 0: never exceeded."""
    clock = OutageClock(0)
    clock.tick(0)
    clock.failed()
    _ticks(clock, 0, 3600, step=0.5)
    assert not clock.exceeded()
