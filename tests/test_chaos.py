"""The chaos campaign, short: every part through real workers; nothing lost, doubled or wrong.

`make chaos` runs the same parts at full size (tests/chaos/). The regression tests below pin
the defects the campaign found, one scenario each.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import chaos
from tests.chaos import changes

SEED = 20261124  # fixed inputs and examples; the instants of the faults are random all the same

pytestmark = pytest.mark.slow


def _assert_clean(tally: chaos.Tally) -> None:
    """Zero lost, duplicated, corrupt, wrong and violations; skip what could not be injected."""
    details = "\n".join(tally.problems)
    assert tally.lost == 0, details
    assert tally.duplicated == 0, details
    assert tally.corrupt_checkpoints == 0, details
    assert tally.wrong_answers == 0, details
    assert tally.violations == 0, details
    if tally.skipped:
        # The rest was checked above; what could not be injected shows as skipped, not passed.
        pytest.skip("; ".join(tally.skipped))


@pytest.mark.parametrize("part", list(chaos.PARTS))
def test_chaos_part_loses_nothing_and_counts_nothing_twice(part: str, tmp_path: Path) -> None:
    """One part of the campaign, short, ends with every answer equal to the oracle's."""
    tally = chaos.run_part(part, tmp_path, short=True, seed_value=SEED)
    assert sum(tally.faults.values()) > 0 or tally.skipped, "the part injected nothing"
    _assert_clean(tally)


def _second_signal_while_unwinding(tally: chaos.Tally, cwd: Path, rng: random.Random) -> None:
    chaos.second_signal_slow_save(
        tally, cwd, signal.SIGTERM, signal.SIGINT, rng, during="timer save"
    )


def _directory_while_following_under_restart(
    tally: chaos.Tally, cwd: Path, rng: random.Random
) -> None:
    changes._changed_while_following(tally, cwd, rng, change="directory", policy="restart")


@pytest.mark.parametrize(
    "scenario",
    [
        # A failed heartbeat (the lock file's utime) escaped as an OSError: a traceback.
        chaos.heartbeat_fault,
        # A second SIGINT while the tasks unwound, after the signal receiver had restored the
        # default handlers, raised KeyboardInterrupt late and the final save went on.
        _second_signal_while_unwinding,
        # A timer save queued behind the completion save rewrote it with completed=false.
        chaos.completion_on_a_slow_disk,
        # A save stuck in fsync held the exit far beyond shutdown_timeout (and Docker's grace).
        chaos.shutdown_on_a_stalled_disk,
        # Following under restart, a directory where the input was ended the run (exit 1)
        # instead of waiting for a file to come back.
        _directory_while_following_under_restart,
    ],
    ids=[
        "heartbeat-eio",
        "second-signal-while-unwinding",
        "completion-flag",
        "stalled-disk",
        "directory-while-following",
    ],
)
def test_regression(
    scenario: Callable[[chaos.Tally, Path, random.Random], None], tmp_path: Path
) -> None:
    """A defect the campaign found stays fixed."""
    tally = chaos.Tally()
    try:
        scenario(tally, tmp_path, random.Random(SEED))
    except chaos.Unavailable as why:
        pytest.skip(str(why))
    _assert_clean(tally)
