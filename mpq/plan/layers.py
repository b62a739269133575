"""One layer's widths in a plan: its weight width (or per-channel runs) and its input's width, and their JSON."""

from __future__ import annotations

from dataclasses import dataclass

from mpq.cost.layer_cost import Choice
from mpq.quant.widths import PLAN_MAX_BITS, PLAN_MIN_BITS, is_plan_width

GRANULARITIES = (
    "channel",
    "tensor",
    "group",
)  # of the weight scales: per output channel, per tensor, per group of weights


@dataclass(frozen=True)
class ChannelRun:
    """Output channels start .. stop - 1 of a layer, all at one weight width."""

    start: int
    stop: int
    weight_bits: int


def storage_chunks(runs: "list[ChannelRun]", group: int | None) -> list[ChannelRun]:
    """The runs cut at multiples of `group` (None: not cut): each chunk's codes are bit-packed on their own."""
    chunks = []
    for run in runs:
        start = run.start
        while start < run.stop:
            stop = run.stop if group is None else min(run.stop, (start // group + 1) * group)
            chunks.append(ChannelRun(start, stop, run.weight_bits))
            start = stop
    return chunks


@dataclass(frozen=True)
class LayerPlan:
    """Widths of one layer: weights (quantized per output channel) and its input activation.

    `channel_bits` (per-channel widths, in runs; None: every channel at `weight_bits`, the widest)
    and `channel_group` (channels stored together) come from a per-channel search."""

    weight_bits: int
    act_bits: int | None
    granularity: str = "channel"
    channel_bits: tuple[ChannelRun, ...] | None = None
    channel_group: int | None = None
    format: str | None = None  # the storage type of a format with named types (GGUF: "Q4_K"), as the file holds it

    @property
    def choice(self) -> Choice:
        return Choice(self.weight_bits, self.act_bits)

    def runs(self, out_channels: int) -> list[ChannelRun]:
        """The layer's widths as runs of channels (one run for a layer-wise plan)."""
        return list(self.channel_bits) if self.channel_bits else [ChannelRun(0, out_channels, self.weight_bits)]

    def channel_widths(self, out_channels: int) -> list[int]:
        """The weight width of every output channel, in order."""
        return [r.weight_bits for r in self.runs(out_channels) for _ in range(r.start, r.stop)]

    def chunks(self, out_channels: int) -> list[ChannelRun]:
        """The chunks the packed export stores separately (one for a layer-wise plan)."""
        return storage_chunks(self.runs(out_channels), self.channel_group)

    def mean_weight_bits(self) -> float:
        """Bits per weight averaged over the layer's channels (channels hold equal numbers of weights)."""
        if not self.channel_bits:
            return float(self.weight_bits)
        return sum((r.stop - r.start) * r.weight_bits for r in self.channel_bits) / self.channel_bits[-1].stop


def layer_to_json(lp: LayerPlan, group_size: int | None = None) -> dict:
    """The layer's plan.json entry; with a group size (the plan's quantizer's), "granularity": "group" and
    "group_size"."""
    entry = {
        "weight_bits": lp.weight_bits,
        "act_bits": lp.act_bits,
        "granularity": "group" if group_size else lp.granularity,
    }
    if group_size:
        entry["group_size"] = group_size
    if lp.format is not None:
        entry["format"] = lp.format
    if lp.channel_bits:
        entry["channel_bits"] = [{"channels": [r.start, r.stop], "weight_bits": r.weight_bits} for r in lp.channel_bits]
        entry["channel_group"] = lp.channel_group
    return entry


def _runs_from_json(name: str, items) -> tuple[ChannelRun, ...]:
    """Runs that start at channel 0 and follow one another without gap or overlap, widths PLAN_MIN_BITS to
    PLAN_MAX_BITS."""
    if not isinstance(items, list) or not items:
        raise ValueError(
            f'layer {name}: channel_bits must be a non-empty list of {{"channels": [start, stop], "weight_bits": b}}'
        )
    runs, expected = [], 0
    for item in items:
        channels = item.get("channels") if isinstance(item, dict) else None
        if not (
            isinstance(channels, list)
            and len(channels) == 2
            and all(isinstance(c, int) and not isinstance(c, bool) for c in channels)
        ):
            raise ValueError(
                f'layer {name}: channel_bits entry {item!r} needs "channels": [start, stop] with whole numbers'
            )
        start, stop = channels
        if start != expected:
            raise ValueError(
                f"layer {name}: channel_bits must cover the channels in order, each once, but run [{start}, {stop}] "
                f"starts at {start} instead of {expected}"
            )
        if stop <= start:
            raise ValueError(f"layer {name}: channel_bits run [{start}, {stop}] holds no channel")
        if not is_plan_width(item.get("weight_bits")):
            raise ValueError(
                f"layer {name}: channel_bits run [{start}, {stop}] has weight_bits {item.get('weight_bits')!r}, not a "
                f"width from {PLAN_MIN_BITS} to {PLAN_MAX_BITS}"
            )
        runs.append(ChannelRun(start, stop, item["weight_bits"]))
        expected = stop
    return tuple(runs)


def layer_from_json(name: str, entry: dict) -> LayerPlan:
    weight_bits, act_bits = entry["weight_bits"], entry.get("act_bits")
    granularity = entry.get("granularity", "channel")
    if not is_plan_width(weight_bits):
        raise ValueError(
            f"layer {name}: weight_bits {weight_bits!r} is not a width from {PLAN_MIN_BITS} to {PLAN_MAX_BITS}"
        )
    if act_bits is not None and not is_plan_width(act_bits):
        raise ValueError(
            f"layer {name}: act_bits {act_bits!r} is not null or a width from {PLAN_MIN_BITS} to {PLAN_MAX_BITS}"
        )
    if granularity not in GRANULARITIES:
        raise ValueError(f"layer {name}: granularity {granularity!r} is not one of {GRANULARITIES}")
    if (granularity == "group") != ("group_size" in entry):
        raise ValueError(f'layer {name}: granularity "group" and "group_size" come together')
    stored = entry.get("format")
    if stored is not None and not isinstance(stored, str):
        raise ValueError(f'layer {name}: format {stored!r} is not a type name such as "Q4_K"')
    if "channel_bits" not in entry:
        return LayerPlan(weight_bits=weight_bits, act_bits=act_bits, granularity=granularity, format=stored)
    runs = _runs_from_json(name, entry["channel_bits"])
    if max(r.weight_bits for r in runs) != weight_bits:
        raise ValueError(
            f"layer {name}: weight_bits {weight_bits} is not the widest of its channel_bits "
            f"({max(r.weight_bits for r in runs)})"
        )
    group = entry.get("channel_group")
    if group is not None and (not isinstance(group, int) or isinstance(group, bool) or group < 1):
        raise ValueError(f"layer {name}: channel_group {group!r} is not a positive whole number")
    return LayerPlan(
        weight_bits=weight_bits, act_bits=act_bits, granularity=granularity, channel_bits=runs, channel_group=group
    )
