"""plan.json "settings" as written by mpq 0.1.0 before they were typed (one flat object), read into
PlanSettings, so that plans saved then still verify and export."""

from __future__ import annotations

from mpq.errors import MpqError
from mpq.plan.settings import ChannelSearch, LatencySource, PlanSettings, SearchSpace
from mpq.quant.quantizer import Quantizer
from mpq.sensitivity.settings import ProbeSettings

_FLAT_SEARCH = {
    "bits",
    "act_bits",
    "act_bits_choice",
    "act_sensitivity",
    "act_tie_groups",
    "metric",
    "width_granularity",
    "channel_group",
    "binary_variables",
    "dominated_choices_dropped",
    "binary_variables_after_presolve",
    "keep",
    "trace_margin",
    "loss",
    "probes",
    "tol",
    "seed",
    "latency",
    "quantizer",
    "container_reserve_bytes",
}
_FLAT_TABLE = {"source", "keep", "tie_groups", "solver_seconds"}


def settings_from_json(data) -> PlanSettings | None:
    """The typed settings of a plan file: None for {}, the current form, or the flat form of mpq 0.1.0."""
    if data == {}:
        return None
    if isinstance(data, dict) and "search_space" not in data and "bits" in data and set(data) <= _FLAT_SEARCH:
        return _from_flat_search(data)
    if isinstance(data, dict) and "solver_seconds" in data and set(data) <= _FLAT_TABLE:
        return PlanSettings(source="table", keep=data.get("keep", {}), tie_groups=data.get("tie_groups", ()))
    return PlanSettings.from_json(data)


def _from_flat_search(data: dict) -> PlanSettings:
    try:
        act_bits = data.get("act_bits")
        space = SearchSpace(
            bits=data["bits"],
            act_bits=act_bits if isinstance(act_bits, list) else [act_bits],
            granularity=data.get("width_granularity", "layer"),
            channel_group=data.get("channel_group", 1),
            trace_margin=data.get("trace_margin", 2.0),
        )
        probes = ProbeSettings(tol=data.get("tol", 0.05), max_probes=data.get("probes", 32), seed=data.get("seed", 0))
        channels = (
            ChannelSearch(
                data["binary_variables"], data["dominated_choices_dropped"], data["binary_variables_after_presolve"]
            )
            if "binary_variables" in data
            else None
        )
        latency = LatencySource.from_json(data["latency"]) if data.get("latency") else None
        return PlanSettings(
            space=space,
            probes=probes,
            quantizer=Quantizer.from_json(data.get("quantizer", {})),
            metric=data.get("metric", "hessian"),
            loss=data.get("loss"),
            keep=data.get("keep", {}),
            act_sensitivity=bool(data.get("act_sensitivity", False)),
            act_tie_groups=data.get("act_tie_groups", ()),
            latency=latency,
            channels=channels,
            container_reserve_bytes=data.get("container_reserve_bytes", 0),
        )
    except (KeyError, TypeError) as exc:
        raise MpqError(f"the plan's settings are malformed ({exc}); make a new plan with `mpq search`") from None
