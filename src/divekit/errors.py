"""The one exception type for problems a user can fix (bad names, bad values, missing files)."""


class DivekitError(Exception):
    """A user-facing error: the message names the problem and what to do about it.

    The command line prints it as a single line and exits non-zero, without a traceback.
    """


class DataError(DivekitError):
    """A dataset is missing, incomplete, corrupt, or could not be downloaded."""
