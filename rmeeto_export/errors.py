"""Error types: what the CLI prints as one line, and what it lets through with a traceback.

UserError: bad input or environment the user can fix; the CLI prints `error: <message>` and exits 1.
InternalError: a broken invariant, i.e. a bug in rmeeto-export; the CLI keeps its traceback.
"""


class UserError(Exception):
    """Bad input or environment the user can fix: the message says what and how."""


class InternalError(Exception):
    """A broken invariant: a bug in rmeeto-export, not bad input, so it keeps its traceback."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def short_list(names: list[str], shown: int) -> str:
    """The first ``shown`` names and how many more: enough to recognise a problem in one error line."""
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
