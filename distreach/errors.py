"""One exception type for bad input: its message is one line naming what is wrong and where."""

import contextlib


class DistreachError(Exception):
    """Bad input or an unsatisfiable request; the message is meant for the user as is."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name if it has none), at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def counted(count: int, word: str) -> str:
    """A count in a message: ``1 step``, ``3 steps``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


@contextlib.contextmanager
def about(prefix: str):
    """A DistreachError raised in the block gets ``prefix`` before its message (what it is about:
    a flag, a config key)."""
    try:
        yield
    except DistreachError as exc:
        raise DistreachError(f"{prefix} {exc}") from None
