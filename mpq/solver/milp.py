"""The MILP solvers mpq runs through PuLP: HiGHS (the highspy package; the default) or CBC (bundled with PuLP).

Both are asked for a relative gap of 0, i.e. a proven optimum. A time limit may stop them first; then
the best plan found so far is kept, and its relative gap to the best proven lower bound is reported:

    gap = (objective - bound) / |objective|        (0 when optimality is proven)
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import pulp

from mpq.errors import MpqError
from mpq.plan.records import SolverStatus
from mpq.plan.settings import DEFAULT_SOLVER, SOLVERS

OPTIMAL, FEASIBLE = SolverStatus.OPTIMAL, SolverStatus.FEASIBLE
INFEASIBLE, NOT_SOLVED = SolverStatus.INFEASIBLE, SolverStatus.NOT_SOLVED


@dataclass(frozen=True)
class SolverRun:
    """One solver call: `status` is optimal (proven), feasible (stopped by the time limit with a plan),
    infeasible, or not solved (stopped with no plan)."""

    solver: str
    status: SolverStatus
    gap: float | None
    seconds: float

    @property
    def has_solution(self) -> bool:
        return self.status in (OPTIMAL, FEASIBLE)


def check_solver(solver: str) -> str:
    """The solver's name, checked: "cbc" or "highs" (which needs the highspy package)."""
    name = str(solver).lower()
    if name not in SOLVERS:
        raise MpqError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    if name == "highs" and not pulp.HiGHS().available():
        raise MpqError("solver highs needs the highspy package: pip install highspy (or use --solver cbc)")
    return name


def check_time_limit(time_limit_s: float | None) -> float | None:
    if time_limit_s is not None and not time_limit_s > 0:
        raise MpqError(f"time limit {time_limit_s} must be a positive number of seconds (or none)")
    return time_limit_s


def _relative_gap(objective: float, bound: float | None) -> float | None:
    """(objective - bound) / |objective|; None when the solver has no finite bound yet."""
    if bound is None or not math.isfinite(bound):
        return None
    return max(0.0, objective - bound) / max(abs(objective), 1e-12)


def _cbc_bound(log: str) -> float | None:
    """The lower bound CBC prints when it stops early ("Lower bound: 1.234")."""
    found = re.findall(r"^Lower bound:\s*(\S+)", log, flags=re.MULTILINE)
    try:
        return float(found[-1]) if found else None
    except ValueError:
        return None


def _run_cbc(program: pulp.LpProblem, time_limit_s: float | None) -> SolverRun:
    handle, log_path = tempfile.mkstemp(prefix="mpq-cbc-", suffix=".log")
    os.close(handle)
    try:
        start = time.perf_counter()
        with warnings.catch_warnings():  # PuLP 3 warns that its bundled CBC goes away in PuLP 4 (pinned below 4)
            warnings.simplefilter("ignore", DeprecationWarning)
            program.solve(
                pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit_s, logPath=log_path)
            )
        seconds = time.perf_counter() - start
        with open(log_path, errors="replace") as f:
            log = f.read()
    finally:
        os.unlink(log_path)
    status = _status(program)
    gap = None
    if status == OPTIMAL:
        gap = 0.0
    elif status == FEASIBLE:
        gap = _relative_gap(pulp.value(program.objective), _cbc_bound(log))
    return SolverRun("cbc", status, gap, seconds)


_BANNER_LOCK = threading.Lock()
_banner_done = False


def _swallow_highs_banner() -> None:
    """HiGHS prints its copyright banner from C to the process's stdout once, when the first solver object is
    made, before any option (output_flag) can turn it off: make that first one with stdout on /dev/null, so
    `--json` prints one JSON object and nothing else."""
    global _banner_done
    with _BANNER_LOCK:
        if _banner_done:
            return
        import highspy

        try:
            saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        except OSError:  # no stdout to protect
            _banner_done = True
            return
        try:
            os.dup2(null, 1)
            highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
        _banner_done = True


def _run_highs(program: pulp.LpProblem, time_limit_s: float | None) -> SolverRun:
    _swallow_highs_banner()
    start = time.perf_counter()
    program.solve(pulp.HiGHS(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit_s, threads=1))
    seconds = time.perf_counter() - start
    status = _status(program)
    gap = None
    if status == OPTIMAL:
        gap = 0.0
    elif status == FEASIBLE:
        gap = _relative_gap(pulp.value(program.objective), program.solverModel.getInfo().mip_dual_bound)
    return SolverRun("highs", status, gap, seconds)


def _status(program: pulp.LpProblem) -> SolverStatus:
    if program.status == pulp.LpStatusOptimal:
        return OPTIMAL if program.sol_status == pulp.LpSolutionOptimal else FEASIBLE
    if program.status == pulp.LpStatusInfeasible:
        return INFEASIBLE
    return NOT_SOLVED


def run_solver(program: pulp.LpProblem, solver: str = DEFAULT_SOLVER, time_limit_s: float | None = None) -> SolverRun:
    """Solve `program` in place with CBC or HiGHS (one thread each), to a proven optimum or the time limit."""
    return (_run_highs if check_solver(solver) == "highs" else _run_cbc)(program, time_limit_s)


def solver_note(solver: Mapping, seconds: float) -> str:
    """One line for report.md/report.json: which solver, whether it proved optimality, its gap and seconds."""
    proof = (
        "proven optimal"
        if solver.get("proven_optimal")
        else f"stopped by the time limit of {solver.get('time_limit_s')} s, not proven optimal"
    )
    gap = solver.get("gap")
    gap_text = "unknown" if gap is None else f"{gap:.3g}"
    return f"solver: {solver.get('name')}, {proof}, relative gap {gap_text}, {seconds:.2f} s"
