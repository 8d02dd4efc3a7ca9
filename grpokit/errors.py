"""The one exception type users see.

Anything the user can fix (a bad config key, a malformed row, a missing file, a reward
that cannot be imported) raises `GrpokitError` with a one-paragraph message that names the
file, line or field and what was expected. The CLI prints the message and exits non-zero
without a traceback; bugs inside grpokit still raise ordinary exceptions.
"""


class GrpokitError(Exception):
    """A problem with the user's input, reported as a clear one-paragraph message."""
