"""The fault-injection and bad-input campaign: real workers, real signals, real faults, counted.

Every part drives real `python -m service run` processes (tests/processes.py) through one family
of faults and holds each outcome to two references that share no code with the worker: the
oracle of the input rules (tests/oracle.py) and the worker's promises (docs/guarantees.md): exact
sums, exit codes, one error line, files left untouched. The campaign counts (tally.py says
what); it never assumes. `short` is the version `make test` runs
(tests/test_chaos.py); the full one is `make chaos`. Faults that need root (tmpfs, mounts) or
strace are reported as skipped when unavailable, never as passed.

    python -m tests.chaos [--short] [--part NAME]... [--seed N] [--json PATH] [--keep]

Adding a part: a module here with one entry point of the `Part` signature,

    def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
        '''One line: the faults this part injects.'''

that runs its scenarios in directories under `root` (`steps.fresh`), two at a time
(`steps.parallel`), draws every random choice from `rng` (so `--seed` replays it), keeps to a
few seconds when `short`, and counts each fault, restart and check in `tally`; then one line in
`PARTS` below. The part then runs in `make chaos`, `--part NAME` and `make test`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from pathlib import Path

from tests.chaos import (
    changes,
    corrupt,
    crashes,
    fleet,
    hostile,
    rotation,
    shutdown,
    signals,
    storage,
    world,
)
from tests.chaos.shutdown import shutdown_on_a_stalled_disk
from tests.chaos.signals import second_signal_slow_save
from tests.chaos.storage import completion_on_a_slow_disk, heartbeat_fault
from tests.chaos.tally import Tally
from tests.processes import Unavailable

__all__ = [
    "PARTS",
    "Part",
    "Tally",
    "Unavailable",
    "completion_on_a_slow_disk",
    "heartbeat_fault",
    "run_part",
    "second_signal_slow_save",
    "shutdown_on_a_stalled_disk",
]

Part = Callable[[Tally, Path, random.Random, bool], None]

# The registry, in the order the campaign runs and the table lists them.
PARTS: dict[str, Part] = {
    "crashes": crashes.part,
    "signals": signals.part,
    "storage": storage.part,
    "corrupt": corrupt.part,
    "hostile": hostile.part,
    "changes": changes.part,
    "shutdown": shutdown.part,
    "rotation": rotation.part,
    "fleet": fleet.part,
    "world": world.part,
}


def run_part(
    name: str, root: Path, *, short: bool, seed_value: int, tally: Tally | None = None
) -> Tally:
    """Run one part in `root`; its tally (or add to `tally`)."""
    tally = tally or Tally()
    rng = random.Random(seed_value ^ zlib.crc32(name.encode()))
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    try:
        PARTS[name](tally, work, rng, short)
    except Unavailable as why:
        tally.skip(str(why))
    return tally
