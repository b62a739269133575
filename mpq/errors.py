"""Errors a user can act on. The CLI prints them as one line; internal errors keep their traceback."""


class MpqError(Exception):
    """Bad input from the user: the message says what to do. CLI exit status 2."""

    exit_status = 2


class BudgetInfeasible(MpqError):
    """No choice of bit widths meets the budgets. CLI exit status 3."""

    exit_status = 3
