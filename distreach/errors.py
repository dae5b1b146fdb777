"""One exception type for bad input: its message is one line naming what is wrong and where."""


class DistreachError(Exception):
    """Bad input or an unsatisfiable request; the message is meant for the user as is."""
