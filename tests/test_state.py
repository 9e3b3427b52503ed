"""The running state and its clocks, with time passed in: no sleeping, no real clock."""

from __future__ import annotations

import random

import pytest

from service.core.position import Pacer, Periodic, Position, RateMeter


def test_position_advance_adds_every_count() -> None:
    """advance adds a region's counts to the position and leaves the old one unchanged."""
    before = Position(offset=10, lines=4, records=3, bad_records=1, sum=-5)
    after = before.advance(consumed=7, lines=3, records=1, bad_records=1, total=12)
    assert after == Position(offset=17, lines=7, records=4, bad_records=2, sum=7)
    assert before == Position(offset=10, lines=4, records=3, bad_records=1, sum=-5)


def test_position_is_frozen() -> None:
    """A Position is a value: it cannot be changed in place."""
    position = Position()
    with pytest.raises(AttributeError):
        position.offset = 5  # type: ignore[misc]


@pytest.mark.parametrize("interval", [0, -1.0])
def test_periodic_needs_a_positive_interval(interval: float) -> None:
    """A timer with a period of zero or less is refused."""
    with pytest.raises(ValueError, match="interval"):
        Periodic(interval, start=0.0)


def test_periodic_is_due_once_per_slot() -> None:
    """Each slot of the grid is due once, at or after its time, and not before."""
    timer = Periodic(2.0, start=100.0)
    assert [timer.due(t) for t in (100.0, 101.9, 102.0, 102.0, 103.9, 104.5)] == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    assert timer.next_due == 106.0


def test_periodic_does_not_drift() -> None:
    """Late checks keep the grid: the next slot is on the grid, not a period after the check."""
    timer = Periodic(1.0, start=0.0)
    late_by = [0.9, 0.5, 0.99, 0.0, 0.3]
    for slot, late in enumerate(late_by, start=1):
        assert timer.due(slot + late)
        assert timer.next_due == slot + 1


def test_periodic_skips_missed_slots() -> None:
    """After a long stall the timer fires once, then waits for the next grid slot."""
    timer = Periodic(1.0, start=0.0)
    assert timer.due(7.4)
    assert timer.next_due == 8.0
    assert not timer.due(7.9)
    assert timer.due(8.0)


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_pacer_unlimited(rate: float) -> None:
    """A rate of 0 means unlimited: never a delay."""
    pacer = Pacer(rate)
    assert [pacer.delay_after(10**6, now=float(t)) for t in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("rate", "batch"), [(1000.0, 1), (1000.0, 250), (3.0, 7), (0.5, 1)])
def test_pacer_long_run_rate(rate: float, batch: int) -> None:
    """A caller that waits the delays it is given handles exactly `rate` records per second."""
    pacer = Pacer(rate)
    now = 50.0
    batches = 400
    for _ in range(batches):
        now += pacer.delay_after(batch, now)
    assert now - 50.0 == pytest.approx(batches * batch / rate)


def test_pacer_does_not_bank_idle_time() -> None:
    """Time spent idle earns no burst: after a pause the next batch is paced again."""
    pacer = Pacer(100.0)
    assert pacer.delay_after(100, now=0.0) == pytest.approx(1.0)
    assert pacer.delay_after(100, now=60.0) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_pacer_never_exceeds_the_limit(seed: int) -> None:
    """However long each batch takes to handle, no stretch of batches beats the limit."""
    rng = random.Random(seed)
    pacer = Pacer(200.0)
    now = 0.0
    ends: list[tuple[float, int]] = []  # (time a batch was done, records so far)
    records = 0
    for _ in range(300):
        batch = rng.randint(1, 60)
        started = now
        now += rng.choice([0.0, rng.uniform(0.0, 0.5)])  # handling time
        records += batch
        now += pacer.delay_after(batch, now)
        ends.append((now, records))
        assert now >= started
    for (early, done_early), (late, done_late) in zip(ends, ends[50:], strict=False):
        assert (done_late - done_early) / (late - early) <= 200.0 * (1 + 1e-9)


def test_rate_meter() -> None:
    """The rate is the records since the previous reading over the seconds since it."""
    meter = RateMeter(records=1000, now=10.0)
    assert meter.rate(1500, now=12.0) == pytest.approx(250.0)
    assert meter.rate(1500, now=13.0) == 0.0
    assert meter.rate(1600, now=13.0) == 0.0  # no time passed: no rate, no division by zero
    assert meter.rate(1700, now=14.0) == pytest.approx(100.0)
