"""Part `hostile`: generated hostile inputs (hypothesis) through the real worker under `skip` and
`fail`, held to the oracle line by line; a 200 MB line, with the worker's memory bounded."""

from __future__ import annotations

import random
import re
import shutil
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from tests.chaos.checks import expect_completed, expect_failure, load_json
from tests.chaos.inputs import BAD_LINES, BLANK_LINES
from tests.chaos.steps import fresh
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, INPUT, MB, RESULT, RSS_LIMIT_MB, start_worker
from tests.oracle import Expected, expected_of
from tests.processes import WorkerProcess

__all__ = ["part"]


@st.composite
def hostile_files(draw: st.DrawFn) -> tuple[bytes, int]:
    """An input file exercising every input rule, and its line limit."""
    max_line = draw(st.sampled_from([8, 32, 128, 4096]))
    pad = st.text(alphabet=" \t", max_size=3).map(str.encode)
    digits = st.one_of(
        st.integers(0, 10**18).map(str),
        st.text(alphabet="0123456789", min_size=1, max_size=30),
        st.integers(10**99, 10**100 - 1).map(str),
    )
    record = st.builds(
        lambda a, s, d, b, cr: a + s + d.encode() + b + cr,
        pad,
        st.sampled_from([b"", b"+", b"-"]),
        digits,
        pad,
        st.sampled_from([b"", b"\r"]),
    )
    bad = st.one_of(
        st.sampled_from(BAD_LINES),
        st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
        st.text(max_size=6).map(lambda t: t.encode().replace(b"\n", b"")),
        st.integers(1, 3).map(lambda extra: b"5" * (max_line + extra)),
    )
    blank = st.sampled_from(BLANK_LINES)
    if draw(st.integers(0, 9)) == 0:
        lines = draw(st.lists(bad, min_size=1, max_size=20))
    else:
        lines = draw(st.lists(st.one_of(record, record, blank, bad), max_size=40))
    endings = draw(
        st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines), max_size=len(lines))
    )
    body = b"".join(line + end for line, end in zip(lines, endings, strict=True))
    unterminated = draw(st.booleans())
    if lines and unterminated:
        body = body[: -len(endings[-1])]  # the last line without its line end
    return body, max_line


def _line_start(data: bytes, number: int) -> int:
    """The byte offset where 1-based line `number` starts."""
    offset = 0
    for _ in range(number - 1):
        offset = data.index(b"\n", offset) + 1
    return offset


def _check_hostile(cwd: Path, data: bytes, max_line: int) -> list[str]:
    """Run the worker on `data` under skip and under fail; what differs from the oracle."""
    problems: list[str] = []
    expected = expected_of(data, max_line_bytes=max_line)
    runs: dict[str, WorkerProcess] = {}
    for policy in ("skip", "fail"):
        directory = cwd / policy
        directory.mkdir(parents=True)
        (directory / INPUT).write_bytes(data)
        runs[policy] = start_worker(
            directory, ["--max-line-bytes", str(max_line), "--on-bad-record", policy]
        )
    for policy, worker in runs.items():
        worker.finish(timeout=60)
        if "Traceback" in worker.stderr or worker.noise:
            problems.append(f"{policy}: traceback or stray output: {worker.stderr[-500:]}")
    skip, fail = runs["skip"], runs["fail"]
    result = load_json(cwd / "skip" / RESULT) or {}
    got = tuple(result.get(k) for k in ("sum", "records", "bad_records", "offset"))
    want = (expected.sum, expected.records, expected.bad_records, expected.offset)
    if skip.code != 0 or got != want:
        problems.append(f"skip: exit {skip.code}, result {got} != oracle {want}")
    logged = [e.get("line") for e in skip.named("bad_record")]
    if logged != list(expected.bad_lines[:100]):
        problems.append(f"skip: bad_record lines {logged} != oracle {expected.bad_lines[:100]}")
    if not expected.bad_lines:
        if fail.code != 0:
            problems.append(f"fail: exit {fail.code} on an input without a bad line")
        return problems
    first = expected.bad_lines[0]
    fatal = fail.named("fatal_error")
    message = str(fatal[0].get("message", "")) if fatal else ""
    if fail.code != 1 or len(fatal) != 1 or not re.search(rf"\bline {first}\b", message):
        problems.append(f"fail: exit {fail.code}, errors {fatal}; first bad line is {first}")
    start = _line_start(data, first)
    checkpoint = load_json(cwd / "fail" / CHECKPOINT) or {}
    before = expected_of(data[:start], max_line_bytes=max_line)
    got = tuple(checkpoint.get(k) for k in ("offset", "records", "bad_records", "sum"))
    want = (start, before.records, before.bad_records, before.sum)
    if got != want:
        problems.append(f"fail: checkpoint {got} != start of line {first} {want}")
    return problems


def _huge_line(tally: Tally, cwd: Path) -> None:
    """A 200 MB last line without '\\n': one bad record, and the worker's memory stays bounded."""
    label = "hostile/200 MB line"
    head = b"5\n-3\n"
    size = 200 * 1024 * 1024
    path = cwd / INPUT
    with path.open("wb") as handle:
        handle.write(head)
        block = b"9" * (8 * 1024 * 1024)
        for _ in range(size // len(block)):
            handle.write(block)
    tally.fault("200 MB line without a newline")
    try:
        skip = start_worker(cwd, ["--on-bad-record", "skip"])
        skip.finish(timeout=120)
        tally.peak("worker peak RSS, 200 MB line (MB)", skip.peak_rss / MB)
        expect_completed(tally, label, skip, Expected(3, 2, 1, 2, len(head) + size, (3,)), cwd)
        fail = start_worker(
            cwd, ["--on-bad-record", "fail", "--checkpoint", "fail.json", "--result", "f.json"]
        )
        fail.finish(timeout=120)
        tally.peak("worker peak RSS, 200 MB line (MB)", fail.peak_rss / MB)
        expect_failure(tally, label + " under fail", fail, mentions=["line 3"])
        stopped = load_json(cwd / "fail.json") or {}
        if (stopped.get("offset"), stopped.get("records"), stopped.get("sum")) != (len(head), 2, 2):
            tally.wrong(label, f"fail: checkpoint {stopped} does not stop before line 3")
        for worker in (skip, fail):
            if worker.peak_rss / MB > RSS_LIMIT_MB:
                tally.violation(
                    label, f"peak RSS {worker.peak_rss / MB:.0f} MB > {RSS_LIMIT_MB} MB"
                )
    finally:
        path.unlink()
    small = fresh(cwd, "baseline")
    (small / INPUT).write_bytes(head)
    baseline = start_worker(small, [])
    baseline.finish(timeout=60)
    tally.peak("worker peak RSS, 5-byte input (MB)", baseline.peak_rss / MB)


_EXAMPLES: list[tuple[bytes, int]] = [
    (b"\n".join(BAD_LINES), 4096),  # a file of nothing but bad lines
    (  # mixed line endings, 100-digit numbers, NUL, invalid UTF-8, no final '\n'
        b"1\r\n-2\n\r\n +3\t\r\n\t\n"
        + b"9" * 100
        + b"\n\x00\n7\n\xff\xfe\n\xc3\x28\n  \n-"
        + b"8" * 100,
        128,
    ),
    (b"12345678\n123456789\n12345678\r\n1234567\r\n", 8),  # the limit exactly, '\r' counted
]


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Generated hostile inputs through the real worker under skip and fail; a 200 MB line."""
    runs = Counter[str]()
    failure: list[str] = []

    @settings(
        max_examples=2 if short else 80,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate] if short else list(Phase),
        suppress_health_check=list(HealthCheck),
    )
    @given(case=hostile_files())
    def check(case: tuple[bytes, int]) -> None:
        runs["examples"] += 1
        cwd = root / f"example{runs['examples']}"
        try:
            problems = _check_hostile(cwd, *case)
        finally:
            shutil.rmtree(cwd, ignore_errors=True)
        if problems:
            failure[:] = [f"input {case[0][:300]!r} max_line_bytes={case[1]}", *problems]
            raise AssertionError("\n".join(problems))

    for data, max_line in reversed(_EXAMPLES):
        check = example(case=(data, max_line))(check)
    try:
        seed(rng.randrange(2**32))(check)()
    except AssertionError:
        tally.wrong("hostile", "\n".join(failure) or traceback.format_exc())
    tally.fault("hostile input files (hypothesis), each under skip and fail", runs["examples"])
    _huge_line(tally, fresh(root, "huge"))
