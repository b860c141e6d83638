"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback. It subclasses ValueError so Python callers can catch it the usual way.
"""


class GptrainError(ValueError):
    """A bad input, with a message that names the problem and the fix."""
