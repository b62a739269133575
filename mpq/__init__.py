"""mpq: mixed-precision quantization search and sensitivity analysis for PyTorch.

The public names are imported when first used (PEP 562), so that `import mpq` and the `mpq` command's
parser (`mpq --help`) do not import torch. `mpq.verify` is both the function and the name of the
subpackage mpq/verify/: importing a module of that subpackage makes Python set the attribute
`mpq.verify` to the subpackage, so this module's class keeps `verify` as a property that always gives
the function (the subpackage stays reachable as `sys.modules["mpq.verify"]` and by `from mpq.verify import ...`).
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> the module that defines it
_PUBLIC = {
    "analyze": "mpq.api.verbs",
    "solve": "mpq.api.verbs",
    "verify": "mpq.api.verbs",
    "search": "mpq.api.search",
    "SearchResult": "mpq.api.search",
    "pareto": "mpq.api.pareto",
    "quantize_": "mpq.api.quantize",
    "ProbeSettings": "mpq.sensitivity.settings",
    "SearchSpace": "mpq.plan.settings",
    "SolverSettings": "mpq.plan.settings",
    "PlanSettings": "mpq.plan.settings",
    "Quantizer": "mpq.quant.quantizer",
    "Budget": "mpq.cost.budget",
    "parse_budget": "mpq.cost.budget",
    "latency_model": "mpq.cost.latency",
    "Dataset": "mpq.inputs.data",
    "named_inputs": "mpq.inputs.data",
    "ModelAdapter": "mpq.inputs.adapter",
    "load_pretrained": "mpq.inputs.huggingface",
    "Plan": "mpq.plan",
    "LayerPlan": "mpq.plan",
    "Sensitivity": "mpq.sensitivity.result",
    "Report": "mpq.verify.report",
    "ParetoResult": "mpq.verify.pareto",
    "MpqError": "mpq.errors",
    "BudgetInfeasible": "mpq.errors",
    "export_plan": "mpq.export.deploy",
    "ExportResult": "mpq.export.deploy",
    "load_packed": "mpq.export.packed_file",
}

__all__ = [
    "analyze",
    "solve",
    "verify",
    "search",
    "SearchResult",
    "quantize_",
    "ProbeSettings",
    "SearchSpace",
    "SolverSettings",
    "Quantizer",
    "PlanSettings",
    "Budget",
    "parse_budget",
    "Dataset",
    "named_inputs",
    "ModelAdapter",
    "load_pretrained",
    "Plan",
    "LayerPlan",
    "Sensitivity",
    "Report",
    "MpqError",
    "BudgetInfeasible",
    "export_plan",
    "ExportResult",
    "load_packed",
    "latency_model",
    "pareto",
    "ParetoResult",
]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mpq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later look-ups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """mpq's module class: `verify` is the function mpq.verify, whatever the import system sets it to."""

    @property
    def verify(self):
        from mpq.api.verbs import verify

        return verify

    @verify.setter
    def verify(self, value) -> None:
        pass  # the import system binding the subpackage mpq/verify/ (it stays in sys.modules["mpq.verify"])


sys.modules[__name__].__class__ = _Package
