"""How a file's name is shown: in metric labels, log events, `status` and `result.json`.

Rule 1: a name is kept exactly as the operating system gave it (a `str` holding any byte that is
        not UTF-8 as a surrogate, Python's `surrogateescape`); the checkpoint keeps those bytes.
Rule 2: wherever a name is shown, `shown` escapes it the same way: each byte that is not UTF-8
        becomes `\\xNN`, so every output stays valid UTF-8 and one file reads the same everywhere.
"""

from __future__ import annotations

__all__ = ["shown"]


def shown(name: str) -> str:
    """`name` as valid UTF-8 text: each byte that is not UTF-8 written as `\\xNN`."""
    if name.isascii():
        return name
    try:
        raw = name.encode(errors="surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system gave (a hand-edited checkpoint)
        return name.encode(errors="backslashreplace").decode()
    return raw.decode(errors="backslashreplace")
