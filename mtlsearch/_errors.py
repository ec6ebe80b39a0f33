"""The one error type users see: a clear, one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (a file, a field, a value). The CLI prints the message alone
    on one line and exits with status 2; no traceback, nothing half-written."""
