"""User-facing errors: each names the file, key or value at fault."""


class DtiError(Exception):
    """A problem with the user's input; the message says what and where."""
