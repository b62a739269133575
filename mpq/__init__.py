"""mpq: mixed-precision quantization search and sensitivity analysis for PyTorch."""

from mpq.api import SearchResult, analyze, search, solve, verify
from mpq.budget import Budget, parse_budget
from mpq.data import Dataset
from mpq.errors import BudgetInfeasible, MpqError
from mpq.export.deploy import ExportResult, export_plan
from mpq.export.packed_file import load_packed
from mpq.latency import latency_model
from mpq.pareto import ParetoResult, pareto
from mpq.plan import LayerPlan, Plan
from mpq.sensitivity import Sensitivity
from mpq.verify import Report

__all__ = [
    "analyze", "solve", "verify", "search", "SearchResult",
    "Budget", "parse_budget", "Dataset", "Plan", "LayerPlan",
    "Sensitivity", "Report", "MpqError", "BudgetInfeasible",
    "export_plan", "ExportResult", "load_packed", "latency_model", "pareto", "ParetoResult",
]
