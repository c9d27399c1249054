"""Errors a user can act on.

The CLI prints a :class:`UserError` as one line and exits with code 2, a :class:`RunError` as one line with
exit code 1; anything else is a bug in fedseqrec and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a missing file, a malformed column, an unknown name, an impossible option."""


class DataError(UserError):
    """The data itself cannot be turned into interactions: say which file, column or row, and what was expected."""


class RunError(Exception):
    """A run that cannot go on (too few clients replied, no client left with privacy budget): what happened,
    and how to continue."""
