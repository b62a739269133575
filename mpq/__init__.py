"""mpq: mixed-precision quantization search and sensitivity analysis for PyTorch."""

from mpq.api.pareto import pareto
from mpq.api.search import SearchResult, search
from mpq.api.verbs import analyze, solve, verify
from mpq.cost.budget import Budget, parse_budget
from mpq.cost.latency import latency_model
from mpq.errors import BudgetInfeasible, MpqError
from mpq.export.deploy import ExportResult, export_plan
from mpq.export.packed_file import load_packed
from mpq.inputs.data import Dataset
from mpq.plan import LayerPlan, Plan
from mpq.plan.settings import PlanSettings, SearchSpace, SolverSettings
from mpq.quant.quantizer import Quantizer
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.settings import ProbeSettings
from mpq.verify.pareto import ParetoResult
from mpq.verify.report import Report

__all__ = [
    "analyze", "solve", "verify", "search", "SearchResult",
    "ProbeSettings", "SearchSpace", "SolverSettings", "Quantizer", "PlanSettings",
    "Budget", "parse_budget", "Dataset", "Plan", "LayerPlan",
    "Sensitivity", "Report", "MpqError", "BudgetInfeasible",
    "export_plan", "ExportResult", "load_packed", "latency_model", "pareto", "ParetoResult",
]
