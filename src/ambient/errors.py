"""User-facing errors: the command line prints these as one clear message, no traceback."""


class AmbientError(Exception):
    """Bad input or state a user can fix. The message names the file, the field and the fix."""
