"""The quantizer setting: how activation ranges and weight scales are chosen, and bias correction.

One `Quantizer` is used throughout a search: the quantization errors of Omega (mpq.sensitivity.error),
the verification, the baselines and the exports all quantize with it. It is recorded in
plan.json's settings ("quantizer") and read back by `mpq verify` and `mpq export`.

    act_observer     minmax | percentile | mse | aciq     (mpq.quant.observers.ACT_OBSERVERS)
    weight_clip      minmax | mse                         (mpq.quant.observers.WEIGHT_CLIPS)
    bias_correction  True | False                         (mpq.quant.bias_correction)
    group_size       None | a power of two >= 8           weight scales per output channel (None) or per
                                                          group of that many consecutive weights of a
                                                          channel (mpq.quant.affine; `--group-size`)
    rounding         nearest | adaround                   how weights round to their codes (mpq.quant.adaround)
    equalize         True | False                         cross-layer equalization before calibration
                                                          (mpq.quant.equalize)

Presets (`--quantizer NAME`): "minmax" (the plain min-max quantizer), "default" (the measured best,
see reports/quantizers.md: percentile activation ranges, MSE weight clipping, bias correction; the
rule: least geometric-mean KL(FP32 || q) over uniform W8/W6/W5/W4 (A8) and the 4 MB plan on the
default model), one per activation observer (with MSE weight clipping and bias correction), and the default
with AdaRound ("adaround"), with cross-layer equalization ("equalize") or with both ("adaround-equalize"; measured
in reports/rounding.md).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields

from mpq.errors import MpqError
from mpq.params import Custom, Flag, Options, check_fields
from mpq.quant.formats import DEFAULT_FORMAT, FORMATS, WeightFormat, weight_format

# the names of mpq.quant.observers' ACT_OBSERVERS and WEIGHT_CLIPS (tests/test_habits.py keeps them equal), here
# so that a Quantizer and the `mpq` parser's choices need no torch
ACT_OBSERVER_NAMES = ("minmax", "percentile", "mse", "aciq")
WEIGHT_CLIP_NAMES = ("minmax", "mse")
ROUNDING_NAMES = ("nearest", "adaround")
MIN_GROUP_SIZE = 8  # below it the float32 scales alone cost 4 bits per weight or more


def check_group_size(group_size) -> int | None:
    """`group_size` if None or a power of two of at least MIN_GROUP_SIZE, else an MpqError saying what to give."""
    if group_size is None:
        return None
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, numbers.Integral)
        or group_size < MIN_GROUP_SIZE
        or group_size & (group_size - 1)
    ):
        raise MpqError(
            f"group size {group_size!r} must be a power of two of at least {MIN_GROUP_SIZE}, e.g. 32, 64 or 128 "
            "(or none for one scale per output channel)"
        )
    return group_size


def _known_format(name) -> str:
    if not isinstance(name, str) or name not in FORMATS:
        raise MpqError(f"unknown weight format {name!r}: choose one of {', '.join(sorted(FORMATS))}")
    return name


QUANTIZER_CONSTRAINTS = {
    "act_observer": Options(ACT_OBSERVER_NAMES),
    "weight_clip": Options(WEIGHT_CLIP_NAMES),
    "bias_correction": Flag(),
    "group_size": [None, Custom(check_group_size, f"a power of two of at least {MIN_GROUP_SIZE}, e.g. 32")],
    "weight_format": Custom(_known_format, "a weight format's name"),
    "rounding": Options(ROUNDING_NAMES),
    "equalize": Flag(),
}


@dataclass(frozen=True)
class Quantizer:
    """Activation observer, weight clipping and bias correction, by name, and the weights' group size
    (None: one scale per output channel)."""

    act_observer: str = "percentile"
    weight_clip: str = "mse"
    bias_correction: bool = True
    group_size: int | None = None
    weight_format: str = DEFAULT_FORMAT
    rounding: str = "nearest"
    equalize: bool = False

    def __post_init__(self) -> None:
        check_fields(self, QUANTIZER_CONSTRAINTS)
        if self.rounding == "adaround" and self.weight_format != DEFAULT_FORMAT:
            raise MpqError(f"adaround rounding needs the {DEFAULT_FORMAT} weight format: give --rounding nearest")
        self.format  # noqa: B018  (a format that does not take this group size is an MpqError here)

    @property
    def format(self) -> WeightFormat:
        """The weight format its codes and scales are stored in (mpq.quant.formats)."""
        return weight_format(self.weight_format, self.group_size)

    def to_json(self) -> dict:
        """Its fields; group_size only when set, so that the JSON of per-channel quantizers is as before."""
        fields = {
            "act_observer": self.act_observer,
            "weight_clip": self.weight_clip,
            "bias_correction": self.bias_correction,
        }
        fields |= {"group_size": self.group_size} if self.group_size is not None else {}
        fields |= {"weight_format": self.weight_format} if self.weight_format != DEFAULT_FORMAT else {}
        fields |= {"rounding": self.rounding} if self.rounding != "nearest" else {}
        return fields | ({"equalize": True} if self.equalize else {})

    def sensitivity_json(self) -> dict:
        """What the sensitivity depends on: its Ω is measured with round-to-nearest on the unequalized model, so
        rounding and equalization are not part of its cache keys."""
        return replace(self, rounding="nearest", equalize=False).to_json()

    @classmethod
    def from_json(cls, data: dict) -> "Quantizer":
        if not isinstance(data, dict):
            raise MpqError(f"the plan's quantizer setting {data!r} is not an object; make a new plan with `mpq search`")
        unknown = sorted(set(data) - {f.name for f in dataclass_fields(cls)})
        if unknown:
            raise MpqError(
                f"the plan's quantizer setting holds unknown keys ({', '.join(unknown)}); make a new plan with "
                "`mpq search`"
            )
        return cls(**data)

    def describe(self) -> str:
        groups = f", weight scales per group of {self.group_size}" if self.group_size is not None else ""
        groups += f", weight format {self.weight_format}" if self.weight_format != DEFAULT_FORMAT else ""
        groups += f", rounding {self.rounding}" if self.rounding != "nearest" else ""
        groups += ", cross-layer equalization" if self.equalize else ""
        return (
            f"activation ranges {self.act_observer}, weight clipping {self.weight_clip}, "
            f"bias correction {'on' if self.bias_correction else 'off'}{groups}"
        )


DEFAULT_QUANTIZER = Quantizer()
PRESETS = {
    "default": DEFAULT_QUANTIZER,
    "minmax": Quantizer("minmax", "minmax", False),
    "percentile": Quantizer("percentile", "mse", True),
    "mse": Quantizer("mse", "mse", True),
    "aciq": Quantizer("aciq", "mse", True),
    "adaround": replace(DEFAULT_QUANTIZER, rounding="adaround"),
    "equalize": replace(DEFAULT_QUANTIZER, equalize=True),
    "adaround-equalize": replace(DEFAULT_QUANTIZER, rounding="adaround", equalize=True),
}


def resolve_quantizer(
    quantizer: "str | Quantizer | None" = None,
    *,
    act_observer: str | None = None,
    weight_clip: str | None = None,
    bias_correction: bool | None = None,
    group_size: int | None = None,
    weight_format: str | None = None,
    rounding: str | None = None,
    equalize: bool | None = None,
) -> Quantizer:
    """A preset name or Quantizer (None: the default), with any of its fields overridden (None: kept)."""
    if isinstance(quantizer, str):
        if quantizer not in PRESETS:
            raise MpqError(f"unknown quantizer preset {quantizer!r}: choose one of {', '.join(PRESETS)}")
        quantizer = PRESETS[quantizer]
    elif quantizer is None:
        quantizer = DEFAULT_QUANTIZER
    elif not isinstance(quantizer, Quantizer):
        raise MpqError(
            f"quantizer must be a preset name ({', '.join(PRESETS)}) or an mpq.Quantizer, not "
            f"{type(quantizer).__name__}"
        )
    overrides = {
        "act_observer": act_observer,
        "weight_clip": weight_clip,
        "bias_correction": bias_correction,
        "group_size": group_size,
        "weight_format": weight_format,
        "rounding": rounding,
        "equalize": equalize,
    }
    return replace(quantizer, **{k: v for k, v in overrides.items() if v is not None})
