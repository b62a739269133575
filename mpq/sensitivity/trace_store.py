"""Trace estimates as the cache stores them (JSON), and back."""

from __future__ import annotations

import numpy as np

from mpq.sensitivity.hessian import HessianTraces


def traces_to_json(traces: HessianTraces) -> dict:
    return {
        "trace": traces.trace.tolist(),
        "stderr": traces.stderr.tolist(),
        "probes": traces.probes,
        "channel_trace": [c.tolist() for c in traces.channel_trace],
        "channel_stderr": [c.tolist() for c in traces.channel_stderr],
        "seconds": traces.seconds,
        "stop_reason": traces.stop_reason,
        "resumed_from": traces.resumed_from,
        "layer_names": traces.layer_names,
        **({"layer_probes": traces.layer_probes.tolist()} if traces.layer_probes is not None else {}),
        **({"capped": traces.capped.tolist()} if traces.capped is not None else {}),
        **({"notes": traces.notes} if traces.notes else {}),
    }


def traces_from_json(data: dict) -> HessianTraces:
    return HessianTraces(
        layer_names=data["layer_names"],
        trace=np.array(data["trace"]),
        stderr=np.array(data["stderr"]),
        probes=data["probes"],
        channel_trace=[np.array(c) for c in data["channel_trace"]],
        channel_stderr=[np.array(c) for c in data["channel_stderr"]],
        seconds=data["seconds"],
        stop_reason=data["stop_reason"],
        resumed_from=data.get("resumed_from", 0),
        layer_probes=np.array(data["layer_probes"]) if "layer_probes" in data else None,
        capped=np.array(data["capped"], dtype=bool) if "capped" in data else None,
        notes=list(data.get("notes", [])),
    )
