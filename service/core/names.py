"""How a file's name is shown: in metric labels, log events, `status` and `result.json`.

Rule 1: a name is kept exactly as the operating system gave it (a `str` holding any byte that is
        not UTF-8 as a surrogate, Python's `surrogateescape`); the checkpoint keeps those bytes.
Rule 2: wherever a name is shown, `shown` escapes it the same way, so every output stays valid
        UTF-8 and one file reads the same everywhere: each byte that is not UTF-8 and each
        ASCII control character (an ESC would drive a terminal) becomes `\\xNN`, every other
        character that does not print (U+0085, which is not the byte 0x85; U+202E, which turns
        text around) `\\uNNNN`, and a backslash `\\\\`. Two names are never shown alike:
        `a\\xff` typed as text reads `a\\\\xff`.
"""

from __future__ import annotations

__all__ = ["shown"]

_NOT_UTF8 = range(0xDC80, 0xDD00)  # the surrogates `surrogateescape` holds a byte in


def shown(name: str) -> str:
    """`name` as printable, valid UTF-8 text, escaped as Rule 2 says."""
    if name.isprintable() and "\\" not in name:
        return name  # nearly every name: nothing to escape
    return "".join(_escaped(character) for character in name)


def _escaped(character: str) -> str:
    code = ord(character)
    if code in _NOT_UTF8:
        return f"\\x{code - 0xDC00:02x}"
    if character == "\\":
        return "\\\\"
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    # C1 controls, format characters (U+202E turns the text after it around), line and
    # paragraph separators, a surrogate no file system gave (a hand-edited checkpoint).
    if not character.isprintable():
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return character
