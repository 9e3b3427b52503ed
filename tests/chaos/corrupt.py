"""Part `corrupt`: torn, zero-filled, wrong-shaped, misplaced and future checkpoints, each refused
with its bytes untouched; leftover temp files of a crashed write, ignored and removed."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.chaos.checks import expect_failure, temp_files
from tests.chaos.inputs import noisy_input
from tests.chaos.steps import finish_run, fresh, graceful_partial_run, parallel
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, INPUT, MAX_LINE, RATE, RESULT, start_worker
from tests.oracle import expected_of

__all__ = ["part"]


FIXTURES = Path(__file__).parent.parent / "fixtures" / "chaos"


def _corruptions(
    valid: bytes, input_size: int, short: bool, rng: random.Random
) -> list[tuple[str, bytes]]:
    """(kind, bytes) of checkpoints the worker must refuse, derived from a valid one."""
    document = json.loads(valid)
    cases: list[tuple[str, bytes]] = []
    cut_at = [n for n in range(len(valid)) if not _same_json(valid[:n], document)]
    if short:
        cut_at = sorted({0, len(valid) // 2, cut_at[-1]})
    cases += [("truncated", valid[:n]) for n in cut_at]
    cases += [
        ("zero-filled", b"\0" * len(valid)),
        ("zero-filled page", b"\0" * 4096),
        ("zero-filled tail", valid[: len(valid) // 3] + b"\0" * (len(valid) - len(valid) // 3)),
        ("whitespace", b" \n"),
        ("random bytes", rng.randbytes(len(valid))),
        ("not UTF-8", valid.replace(b'"version"', b'"versi\xffn"')),
    ]

    def edited(**changes: Any) -> bytes:
        copy = dict(document)
        for key, value in changes.items():
            if value is _DELETE:
                copy.pop(key, None)
            else:
                copy[key] = value
        return json.dumps(copy).encode()

    shapes: list[tuple[str, bytes]] = [
        ("wrong shape", b"[]"),
        ("wrong shape", b"null"),
        ("wrong shape", b"42"),
        ("wrong shape", b'"checkpoint"'),
        ("wrong shape", b"{}"),
        ("wrong shape", b"[" * 100_000 + b"]" * 100_000),
        ("wrong shape", edited(sum=_DELETE)),
        ("wrong shape", edited(sum=str(document["sum"]))),
        ("wrong shape", edited(sum=1.5)),
        ("wrong shape", json.dumps({**document, "sum": "NaN"}).replace('"NaN"', "NaN").encode()),
        ("wrong shape", edited(records=-1)),
        ("wrong shape", edited(records=True)),
        ("wrong shape", edited(offset=str(document["offset"]))),
        ("wrong shape", edited(lines=0)),
        ("wrong shape", edited(identity=_DELETE)),
        ("wrong shape", edited(identity="abc")),
        ("wrong shape", edited(input=7)),
        ("wrong shape", edited(completed="yes")),
        ("negative offset", edited(offset=-1)),
        ("offset beyond the end", edited(offset=input_size + 100, lines=document["lines"])),
        ("offset off by one", edited(offset=document["offset"] + 1)),
        ("offset off by one", edited(offset=document["offset"] - 1)),
        ("unknown version", edited(version=2)),
        ("unknown version", edited(version=0)),
        ("unknown version", edited(version="1")),
        ("unknown version", edited(version=True)),
        ("unknown version", edited(version=1.0)),
        ("unknown version", edited(version=_DELETE)),
    ]
    if short:
        shapes = (
            rng.sample(shapes[:18], 1) + rng.sample(shapes[18:22], 2) + rng.sample(shapes[22:], 1)
        )
        cases = [*cases[: len(cut_at)], rng.choice(cases[len(cut_at) :])]
    cases += shapes
    fixtures = sorted(FIXTURES.glob("checkpoints/*.json"))
    if not fixtures:
        raise RuntimeError(f"no checkpoint fixtures in {FIXTURES}")
    if short:
        fixtures = rng.sample(fixtures, 1)
    cases += [(f"fixture {fixture.stem}", fixture.read_bytes()) for fixture in fixtures]
    return cases


_DELETE = object()


def _same_json(raw: bytes, document: Any) -> bool:
    try:
        return bool(json.loads(raw) == document)
    except ValueError:
        return False


def _refuse_checkpoint(tally: Tally, cwd: Path, kind: str, corrupt: bytes, data: bytes) -> None:
    """A checkpoint that cannot be trusted: exit 1, one line naming it, bytes untouched."""
    label = f"corrupt/{kind}"
    (cwd / INPUT).write_bytes(data)
    (cwd / CHECKPOINT).write_bytes(corrupt)
    worker = start_worker(cwd, ["--max-line-bytes", str(MAX_LINE)])
    worker.finish(timeout=60)
    tally.fault("corrupt checkpoint: " + ("fixture file" if kind.startswith("fixture") else kind))
    # An offset past the end is indistinguishable from a truncated input: input_changed.
    names: tuple[str, ...] = (CHECKPOINT, INPUT) if "offset" in kind else (CHECKPOINT,)
    expect_failure(tally, label, worker, mentions=[names])
    if (cwd / CHECKPOINT).read_bytes() != corrupt:
        tally.violation(label, "the refused checkpoint was rewritten")
    if worker.named("checkpoint_saved") or (cwd / RESULT).exists():
        tally.violation(label, "the worker carried on from a checkpoint it could not trust")


def _leftover_temp(
    tally: Tally, cwd: Path, kind: str, valid: bytes | None, temp: bytes, data: bytes
) -> None:
    """A temp file from a crashed write beside the checkpoint: ignored, removed, exact resume."""
    label = f"corrupt/leftover temp ({kind})"
    (cwd / INPUT).write_bytes(data)
    if valid is not None:
        (cwd / CHECKPOINT).write_bytes(valid)
    (cwd / f".{CHECKPOINT}.k3x9q2ab.tmp").write_bytes(temp)
    tally.fault(f"leftover temp file: {kind}")
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))
    if temp_files(cwd):
        tally.violation(label, "the leftover temp file is still there")


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Torn, zero-filled, wrong-shaped, misplaced and future checkpoints; leftover temp files."""
    data = noisy_input(rng, RATE * 2, final_newline=True)
    origin = fresh(root, "origin")
    (origin / INPUT).write_bytes(data)
    valid = graceful_partial_run(tally, "corrupt/origin", origin, rng)
    cases = _corruptions(valid, len(data), short, rng)
    jobs: list[Callable[[], None]] = [
        functools.partial(_refuse_checkpoint, tally, fresh(root, f"case{i}"), kind, raw, data)
        for i, (kind, raw) in enumerate(cases)
    ]
    newer = json.loads(valid)
    temps = [
        ("zero-filled", valid, b"\0" * len(valid)),
        ("torn", valid, valid[: len(valid) // 2]),
        ("a complete newer checkpoint", valid, json.dumps({**newer, "records": 1}).encode()),
        ("no checkpoint yet", None, valid[:10]),
    ]
    if short:
        temps = rng.sample(temps, 2)
    jobs += [
        functools.partial(_leftover_temp, tally, fresh(root, f"temp{i}"), kind, v, t, data)
        for i, (kind, v, t) in enumerate(temps)
    ]
    parallel(tally, jobs)
