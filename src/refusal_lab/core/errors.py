"""User-facing errors: one line that names the problem and the fix. The CLI prints them without a traceback."""


class RefusalLabError(Exception):
    """An input or environment problem the user can fix; the message says how."""
