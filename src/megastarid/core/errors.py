"""The one exception type that reaches the user as a single line instead of a traceback, and how such a
line quotes a user's value."""

from __future__ import annotations

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
