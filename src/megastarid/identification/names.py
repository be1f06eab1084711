"""The rule an individual's name keeps wherever a name enters the catalogue (a decisions file, a star tree's
folders or a star CSV at build time): text of a sane length that prints on one line and reads as it is
stored, so no name splits ``catalogue log`` rows, writes a NUL into a MARK file or shows its letters in
another order than they are stored. ``printable`` shows any other text (a file name) the same way safely.
"""

from __future__ import annotations

import unicodedata

#: the most characters an individual's name may have
NAME_LIMIT = 200
#: Unicode categories that break a line or are not text: controls (NUL, newline, tab, DEL ...), line and
#: paragraph separators
_UNPRINTABLE = ("Cc", "Zl", "Zp")
#: the characters that reorder the text around them (bidirectional marks, embeddings, overrides, isolates)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe(char: str) -> str | None:
    """What kind of character ``char`` is when no name may hold it (``control``, ``bidirectional``), else
    None."""
    if unicodedata.category(char) in _UNPRINTABLE:
        return "control"
    return "bidirectional" if char in _BIDI else None


def name_fault(name: str) -> str | None:
    """Why ``name`` cannot be an individual's name (too long, or holding a control or bidirectional
    character), said as the end of a sentence about it; None when it can."""
    if len(name) > NAME_LIMIT:
        return f"is {len(name)} characters long (at most {NAME_LIMIT})"
    for char in name:
        kind = unsafe(char)
        if kind is not None:
            return f"holds the {kind} character U+{ord(char):04X} (names print on one line, as stored)"
    return None


def printable(text: str) -> str:
    """``text`` with each character no name may hold written as its Python escape (``\\n``, ``\\u202e``)."""
    return "".join(char.encode("unicode_escape").decode() if unsafe(char) else char for char in text)
