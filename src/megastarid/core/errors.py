"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input, a bad option or a missing file that the user can fix.

    The message must name the file, column or option at fault; CLIs print it as one line.
    """
