"""Types of the native parsing kernel (service/_kernel.c)."""

from typing_extensions import Buffer

IMPLEMENTATIONS: tuple[str, ...]
SCALAR: int
AVX2: int
BEST: int
DETAILS: int
MAX_DIGITS: int
NOT_AN_INTEGER: int
LINE_TOO_LONG: int
STOP_END: int
STOP_LONG_NUMBER: int
STOP_BAD: int
STOP_DETAILS_FULL: int

def scan(
    data: Buffer,
    start: int,
    max_line_bytes: int,
    stop_at_bad: bool,
    details: int,
    *,
    implementation: int = ...,
) -> tuple[int, int, int, int, int, int, int, int, tuple[tuple[int, int, int], ...]]: ...
def reuse_freed_memory() -> bool: ...
