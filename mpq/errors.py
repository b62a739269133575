"""Errors a user can act on. The CLI prints them as one line; internal errors keep their traceback."""


class MpqError(Exception):
    """Bad input from the user: the message says what to do. CLI exit status 2."""

    exit_status = 2


class BudgetInfeasible(MpqError):
    """No choice of bit widths meets the budgets. CLI exit status 3."""

    exit_status = 3


def first_line(exc: BaseException) -> str:
    """The first line of what an exception says (its type's name when it says nothing): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
