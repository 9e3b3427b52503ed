"""The benchmark's input files, generated with numpy and cached under bench/results/inputs/.

Rule 1: a file's name holds what it was made from (count and seed, or its parts), so a cached
        file is reused only when it is the same file; a half-written file is never reused
        (written to a temporary name, then renamed, its sidecar last).
Rule 2: the numbers have the distribution of `checkpoint-worker generate` (uniform in
        0..999999, one per line, '\\n' endings), at numpy speed instead of the random module's.
Rule 3: each file's sidecar holds its record count and exact sum, added up from the generator's
        integers, not from the text: an oracle that shares nothing with the worker.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "INPUTS",
    "SHAPES",
    "Input",
    "concatenated",
    "line_start_near",
    "numbers_file",
    "shaped_file",
    "tail_file",
]

INPUTS = Path(__file__).resolve().parent / "results" / "inputs"
_LARGEST = 999_999
_PIECE = 5_000_000  # numbers encoded at once: ~35 MB of text, a few hundred MB of scratch
_COPY_BUFFER = 16 * 1024 * 1024


@dataclass(frozen=True)
class Input:
    """A cached input file and what it must add up to (None: not known in advance)."""

    path: Path
    records: int | None
    sum: int | None

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _encode(values: npt.NDArray[np.int64]) -> bytes:
    """Non-negative integers as decimal text, one per line."""
    digits = np.ones(len(values), dtype=np.int64)
    for place in range(1, len(str(_LARGEST))):
        digits += values >= 10**place
    ends = np.cumsum(digits + 1)  # each line's end, just past its '\n'
    text = np.empty(int(ends[-1]), dtype=np.uint8)
    text[ends - 1] = ord("\n")
    rest = values.copy()
    for place in range(int(digits.max())):
        has_place = digits > place
        text[(ends - 2 - place)[has_place]] = (rest[has_place] % 10 + ord("0")).astype(np.uint8)
        rest //= 10
    return text.tobytes()


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _cached(path: Path) -> Input | None:
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if not path.exists():
        return None
    return Input(path, meta["records"], meta["sum"])


def _publish(path: Path, write: Callable[[Path], tuple[int | None, int | None]]) -> Input:
    """Run `write(temporary)`, which returns (records, sum); rename it to `path`; cache it."""
    INPUTS.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        records, total = write(temporary)
        # On disk before any timing starts: a later fsync (the worker's checkpoints) would
        # otherwise wait for this file's writeback.
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _sidecar(path).write_text(json.dumps({"records": records, "sum": total}) + "\n")
    return Input(path, records, total)


def numbers_file(count: int, seed: int) -> Input:
    """`count` random numbers in 0..999999, one per line (cached)."""
    return shaped_file(count, seed, PLAIN)


def _every_thousandth_bad(text: bytes) -> bytes:
    lines = text.split(b"\n")
    for index in range(999, len(lines) - 1, 1000):
        lines[index] = b"x" + lines[index]
    return b"\n".join(lines)


# Each shape rewrites a piece of plain lines ('\n'-terminated, a multiple of 1000 lines).
SHAPES: dict[str, Callable[[bytes], bytes]] = {
    "crlf": lambda text: text.replace(b"\n", b"\r\n"),
    "plus": lambda text: b"+" + text[:-1].replace(b"\n", b"\n+") + b"\n",
    "padded": lambda text: b"  " + text[:-1].replace(b"\n", b" \t\n  ") + b" \t\n",
    "bad-1-in-1000": _every_thousandth_bad,
}
WIDE = "21-38-digits"
PLAIN = "plain"


def _wide_numbers(rng: np.random.Generator, count: int) -> list[int]:
    """`count` numbers of 21 to 38 digits: the width uniform, then the top digits of 54."""
    widths = rng.integers(21, 39, count).tolist()
    high, middle, low = (rng.integers(10**17, 10**18, count).tolist() for _ in range(3))
    return [
        (h * 10**36 + m * 10**18 + lo) // 10 ** (54 - w)
        for w, h, m, lo in zip(widths, high, middle, low, strict=True)
    ]


def shaped_file(count: int, seed: int, shape: str) -> Input:
    """`count` numbers of `numbers_file` in one of `SHAPES`, or `WIDE` numbers, or `PLAIN`."""
    path = INPUTS / (
        f"numbers-{count}-seed{seed}" + ("" if shape == PLAIN else f"-{shape}") + ".txt"
    )
    cached = _cached(path)
    if cached is not None:
        return cached

    def write(temporary: Path) -> tuple[int, int]:
        rng = np.random.default_rng(seed)
        records = total = 0
        with open(temporary, "wb") as handle:
            for start in range(0, count, _PIECE):
                size = min(_PIECE, count - start)
                if shape == WIDE:
                    wide = _wide_numbers(rng, size)
                    handle.write(b"".join(b"%d\n" % value for value in wide))
                    records, total = records + size, total + sum(wide)
                    continue
                values = rng.integers(0, _LARGEST + 1, size, dtype=np.int64)
                text = _encode(values)
                handle.write(text if shape == PLAIN else SHAPES[shape](text))
                counted = values
                if shape == "bad-1-in-1000":
                    counted = np.delete(values, np.arange(999, size, 1000))
                records, total = records + len(counted), total + int(counted.sum())
        return records, total

    return _publish(path, write)


def concatenated(part: Input, copies: int) -> Input:
    """`copies` copies of `part` end to end (cached): a big input for the price of a copy."""
    path = INPUTS / f"{part.path.stem}-x{copies}.txt"
    cached = _cached(path)
    if cached is not None:
        return cached

    def write(temporary: Path) -> tuple[int | None, int | None]:
        with open(temporary, "wb") as out:
            for _ in range(copies):
                with open(part.path, "rb") as source:
                    shutil.copyfileobj(source, out, _COPY_BUFFER)
        records = None if part.records is None else part.records * copies
        return records, None if part.sum is None else part.sum * copies

    return _publish(path, write)


def line_start_near(path: Path, offset: int) -> int:
    """The first line start at or after `offset`."""
    if offset <= 0:
        return 0
    with open(path, "rb") as handle:
        handle.seek(offset - 1)
        window = handle.read(4096)
    return offset + window.index(b"\n")


def tail_file(source: Input, start: int) -> Input:
    """The bytes of `source` from `start` on, as a file of their own (cached; sum unknown)."""
    path = INPUTS / f"{source.path.stem}-from{start}.txt"
    cached = _cached(path)
    if cached is not None:
        return cached

    def write(temporary: Path) -> tuple[int | None, int | None]:
        with open(source.path, "rb") as handle, open(temporary, "wb") as out:
            handle.seek(start)
            shutil.copyfileobj(handle, out, _COPY_BUFFER)
        return None, None

    return _publish(path, write)
