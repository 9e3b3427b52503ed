"""The tally: everything a campaign saw, counted; `clean` when nothing was lost, doubled,
corrupt or wrong, and no promise was broken.

- lost / duplicated: the final records and bad records against the oracle's, per final run
  (lost = max(0, oracle - got), duplicated = max(0, got - oracle));
- corrupt checkpoints seen: a checkpoint on disk that does not parse after a fault;
- wrong answers: a sum, count or offset (final, or in a checkpoint on disk) that differs from the
  oracle's for the input it claims to have consumed;
- contract violations: a wrong exit code, a missing or extra error line, a traceback, a file that
  had to stay untouched and changed, a shutdown slower than its timeout.

Parts run their scenarios two at a time in threads: every method takes the lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.oracle import Expected

__all__ = ["Tally"]


@dataclass
class Tally:
    """Everything a campaign saw; `clean` when nothing was lost, doubled, corrupt or wrong."""

    faults: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt_checkpoints: int = 0
    wrong_answers: int = 0
    violations: int = 0
    final_checks: int = 0
    observed: Counter[str] = field(default_factory=Counter)
    peaks: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fault(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.faults[kind] += count

    def restart(self) -> None:
        with self._lock:
            self.restarts += 1

    def observe(self, what: str, count: int = 1) -> None:
        with self._lock:
            self.observed[what] += count

    def peak(self, what: str, value: float) -> None:
        with self._lock:
            self.peaks[what] = max(self.peaks.get(what, value), value)

    def skip(self, why: str) -> None:
        with self._lock:
            if why not in self.skipped:
                self.skipped.append(why)

    def violation(self, label: str, message: str) -> None:
        with self._lock:
            self.violations += 1
            self.problems.append(f"[{label}] {message[:2000]}")

    def wrong(self, label: str, message: str) -> None:
        with self._lock:
            self.wrong_answers += 1
            self.problems.append(f"[{label}] wrong answer: {message[:2000]}")

    def corrupt(self, label: str, message: str) -> None:
        with self._lock:
            self.corrupt_checkpoints += 1
            self.problems.append(f"[{label}] corrupt checkpoint: {message[:2000]}")

    def final(self, label: str, got: dict[str, Any], expected: Expected) -> None:
        """Compare a run's final figures with the oracle's."""
        counted = (got.get("records"), got.get("bad_records"))
        wanted = (expected.records, expected.bad_records)
        with self._lock:
            self.final_checks += 1
            for have, want in zip(counted, wanted, strict=True):
                have_count = have if isinstance(have, int) else 0
                self.lost += max(0, want - have_count)
                self.duplicated += max(0, have_count - want)
        mine = (got.get("sum"), *counted, got.get("offset"))
        theirs = (expected.sum, *wanted, expected.offset)
        if mine != theirs:
            self.wrong(label, f"(sum, records, bad_records, offset) {mine} != oracle {theirs}")

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.corrupt_checkpoints
            or self.wrong_answers
            or self.violations
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "restarts": self.restarts,
            "records_lost": self.lost,
            "records_duplicated": self.duplicated,
            "corrupt_checkpoints_seen": self.corrupt_checkpoints,
            "wrong_answers": self.wrong_answers,
            "contract_violations": self.violations,
            "final_checks": self.final_checks,
            "observed": dict(sorted(self.observed.items())),
            "peaks": {k: round(v, 3) for k, v in sorted(self.peaks.items())},
            "problems": self.problems,
            "skipped": self.skipped,
        }
