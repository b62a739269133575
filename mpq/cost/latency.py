"""Latency models: where a layer's latency at a choice of widths comes from.

Two kinds, with one interface (covers, latency_s, lacks, to_json, describe):
    mpq.latency_table.LatencyTable   measured rows (`mpq profile`, or your own), matched exactly
    mpq.roofline.Roofline            max(compute, memory) + overhead on a named device (TOML)
A latency budget needs one of them. Choices a model does not cover (no table row, no device kernel)
are dropped from the candidates, and the plan says which; a layer left with none is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

from mpq.cost.latency_table import LatencyTable, read_latency_table
from mpq.cost.layer_cost import Choice
from mpq.cost.roofline import DEVICES_DIR, Roofline, load_device, shipped_devices
from mpq.errors import MpqError
from mpq.inputs.graph import LayerInfo


def device_model(spec: "str | Path", batch: int | None = None) -> Roofline:
    """A roofline of a shipped device (`nvidia-t4`) or of a device TOML file."""
    path = Path(spec)
    if path.suffix != ".toml":
        if str(spec) not in shipped_devices():
            raise MpqError(
                f"unknown device {str(spec)!r}: name one of {', '.join(shipped_devices())}, or give a device .toml file"
            )
        path = DEVICES_DIR / f"{spec}.toml"
    return Roofline(load_device(path), _batch(1 if batch is None else batch), str(spec))


def _batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MpqError(f"latency batch {batch!r} must be a whole number of samples, 1 or more")
    return batch


def latency_model(spec, batch: int | None = None) -> "LatencyTable | Roofline | None":
    """None, a latency model as is, a `.csv` latency table, a device `.toml`, or a shipped device name.

    `batch`: the batch latencies are looked up at (tables: None takes the table's only batch; devices: 1).
    """
    if spec is None or isinstance(spec, (LatencyTable, Roofline)):
        return spec
    if not isinstance(spec, (str, Path)):
        raise MpqError(
            f"latency must be a device name, a device .toml or a latency table .csv, not {type(spec).__name__}"
        )
    if Path(spec).suffix == ".csv":
        return read_latency_table(spec, None if batch is None else _batch(batch))
    return device_model(spec, batch)


def covered_choices(layers: list[LayerInfo], choices: dict[str, list[Choice]], latency) -> dict[str, list[Choice]]:
    """Each layer's choices that `latency` has a latency for; MpqError naming a layer left with none."""
    covered = {}
    for layer in layers:
        covered[layer.name] = [c for c in choices[layer.name] if latency.covers(layer, c)]
        if not covered[layer.name]:
            labels = ", ".join(c.label() for c in choices[layer.name])
            raise MpqError(
                f"{latency.lacks(layer)} at any candidate width ({labels}): give widths it has (--bits, --act-bits), "
                "or measure this model with `mpq profile --out FILE.csv`"
            )
    return covered


def coverage_note(layers: list[LayerInfo], choices: dict[str, list[Choice]], latency) -> str | None:
    """A sentence naming the candidate choices dropped for lack of a latency, or None when none was."""
    dropped: dict[Choice, list[str]] = {}
    for layer in layers:
        for c in choices[layer.name]:
            if not latency.covers(layer, c):
                dropped.setdefault(c, []).append(layer.name)
    if not dropped:
        return None
    everywhere = [c.label() for c, names in dropped.items() if len(names) == len(layers)]
    partly = [
        f"{c.label()} on {len(names)} of {len(layers)} layers (e.g. {names[0]})"
        for c, names in dropped.items()
        if len(names) < len(layers)
    ]
    parts = ([f"{', '.join(everywhere)} on any layer"] if everywhere else []) + partly
    return (
        f"{latency.describe()} has no latency for "
        + "; ".join(parts)
        + ": those choices were not offered to the solver"
    )
