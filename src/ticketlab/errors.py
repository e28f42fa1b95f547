"""The one exception type that reaches users as a one-line message."""


class UserError(Exception):
    """Bad input from the user: the CLI prints `ticketlab: error: <message>` and exits with code 2.

    The message says what was wrong and what is accepted, on one line.
    """


def unknown_name(kind: str, name: str, valid) -> UserError:
    """The standard error for a name that is not in a registry; lists the valid names."""
    return UserError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
