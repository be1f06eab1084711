"""The one exception type that reaches the user as a single line instead of a traceback, and how such a
line quotes a user's value (or cuts one inside a library's message)."""

from __future__ import annotations

import re
import reprlib


class UserError(Exception):
    """Bad input, a bad option or a missing file that the user can fix.

    The message must name the file, column or option at fault; CLIs print it as one line.
    """


#: Most characters of a user's value that an error message echoes.
QUOTE_LIMIT = 100

_SHORT = reprlib.Repr()  # bounded work and length on a big nested value (Python 3.11: no keywords)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = QUOTE_LIMIT


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as an error message quotes it (its ``repr``), never more than about ``limit`` characters.

    A value can be anything a user typed or a file held (a 500-character option, a list nested a million
    times): the message names it without echoing all of it, ``'xxxx…' (500 characters)``.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit] + '…'!r} ({len(value)} characters)"
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


#: a quoted value or a word longer than what an error message echoes
_LONG_WORD = re.compile(rf"'[^']{{{QUOTE_LIMIT + 1},}}'|\S{{{QUOTE_LIMIT + 1},}}")


def cut_long_words(text: str) -> str:
    """``text`` (a message from tyro or PyYAML) with every quoted value or word longer than ``QUOTE_LIMIT``
    cut as ``quoted`` cuts one value, so a library's message never echoes all of a long user value."""
    return _LONG_WORD.sub(_cut_word, text)


def _cut_word(match: re.Match[str]) -> str:
    word = match[0]
    if word.startswith("'") and word.endswith("'") and len(word) > 1:
        inner = word[1:-1]
        if inner.endswith("…") and len(inner) <= QUOTE_LIMIT + 1:
            return word  # already cut by ``quoted``
        return f"'{inner[:QUOTE_LIMIT]}…' ({len(inner)} characters)"
    return f"{word[:QUOTE_LIMIT]}… ({len(word)} characters)"
