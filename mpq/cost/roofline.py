"""A roofline latency model of a named device (TOML), for when no measured table exists.

For layer l at weight width b_w and input width b_a (a = b_a, or 32 for a float input), batch B:
    ops_l      = 2 * MACs_l * B                                        (one multiply + one add per MAC)
    bytes_l    = ceil(n_l * b_w / 8) + ceil(B * (in_l + out_l) * a / 8)
                 (packed weights, read once; input and output activations, the output at the layer's
                  own input width: the next layer's width is its own choice)
    latency_l  = max(ops_l / peak(b_w, a), bytes_l / bandwidth) + overhead
    peak(b_w, a) = ops/s of the fastest kernel of the device whose weight_bits >= b_w and act_bits >= a
An embedding (a lookup, no MACs) gathers its output rows: bytes_l = ceil(B * out_l * b_w / 8) + B * out_l * 4.
A choice no kernel can hold (e.g. a float input on a device without float kernels) is not offered.

Device file (mpq/cost/hardware/devices/NAME.toml):
    name = "nvidia-t4"
    source = "where the numbers come from"
    memory_bandwidth_bytes_per_s = 320e9
    layer_overhead_s = 5e-6
    [[kernels]]
    name = "int8 tensor core"
    weight_bits = 8
    act_bits = 8          # 32 = float inputs
    ops_per_s = 130e12
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mpq.cost.layer_cost import FLOAT_BITS, Choice
from mpq.errors import MpqError
from mpq.inputs.graph import LayerInfo

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

DEVICES_DIR = Path(__file__).parent / "hardware" / "devices"


@dataclass(frozen=True)
class Kernel:
    """One kind of arithmetic the device runs: operands up to these widths, at this peak rate."""

    name: str
    weight_bits: int
    act_bits: int
    ops_per_s: float


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    memory_bandwidth_bytes_per_s: float
    layer_overhead_s: float
    kernels: tuple[Kernel, ...]
    source: str = ""
    description: str = ""

    def kernel_for(self, choice: Choice) -> Kernel | None:
        """The fastest kernel that holds both widths (None if none does)."""
        act = choice.act_bits or FLOAT_BITS
        fitting = [k for k in self.kernels if k.weight_bits >= choice.weight_bits and k.act_bits >= act]
        return max(fitting, key=lambda k: k.ops_per_s, default=None)


def shipped_devices() -> list[str]:
    return sorted(p.stem for p in DEVICES_DIR.glob("*.toml"))


def _positive(where: str, data: dict, key: str, allow_zero: bool = False) -> float:
    value = data.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise MpqError(
            f"{where}: {key} must be a positive number" + (" or 0" if allow_zero else "") + f", not {value!r}"
        )
    return float(value)


def _kernel(where: str, data: dict) -> Kernel:
    bits = {}
    for key in ("weight_bits", "act_bits"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= FLOAT_BITS:
            raise MpqError(f"{where}: {key} must be a width from 1 to 32 (32 = float), not {value!r}")
        bits[key] = value
    return Kernel(
        str(data.get("name", f"W{bits['weight_bits']}A{bits['act_bits']}")),
        bits["weight_bits"],
        bits["act_bits"],
        _positive(where, data, "ops_per_s"),
    )


def load_device(path: "str | Path") -> DeviceSpec:
    """Read a device TOML (see the module docstring); MpqError naming the file when it is malformed."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MpqError(f"cannot read device file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MpqError(f"device file {path} is not valid TOML ({exc})") from None
    kernels = data.get("kernels")
    if not isinstance(kernels, list) or not kernels or not all(isinstance(k, dict) for k in kernels):
        raise MpqError(f"device file {path} needs at least one [[kernels]] table (weight_bits, act_bits, ops_per_s)")
    return DeviceSpec(
        name=str(data.get("name", path.stem)),
        memory_bandwidth_bytes_per_s=_positive(str(path), data, "memory_bandwidth_bytes_per_s"),
        layer_overhead_s=_positive(
            str(path), {"layer_overhead_s": data.get("layer_overhead_s", 0.0)}, "layer_overhead_s", allow_zero=True
        ),
        kernels=tuple(_kernel(f"{path} kernel {i + 1}", k) for i, k in enumerate(kernels)),
        source=str(data.get("source", "")),
        description=str(data.get("description", "")),
    )


def roofline_bytes(layer: LayerInfo, choice: Choice, batch: int) -> int:
    """Bytes a layer moves (see the module docstring)."""
    out = math.prod(layer.output_shape)
    if layer.kind == "embedding":
        return math.ceil(batch * out * choice.weight_bits / 8) + batch * out * 4
    act = choice.act_bits or FLOAT_BITS
    return math.ceil(layer.params * choice.weight_bits / 8) + math.ceil(
        batch * (math.prod(layer.input_shape) + out) * act / 8
    )


@dataclass
class Roofline:
    """latency_l = max(2 MACs B / peak, bytes / bandwidth) + overhead on `device`, at `batch` samples."""

    device: DeviceSpec
    batch: int = 1
    spec: str = ""  # what the user named: a shipped device or a .toml path

    def covers(self, layer: LayerInfo, choice: Choice) -> bool:
        return self.device.kernel_for(choice) is not None

    def latency_s(self, layer: LayerInfo, choice: Choice) -> float:
        kernel = self.device.kernel_for(choice)
        if kernel is None:
            raise MpqError(f"device {self.device.name} has no kernel for {choice.label()}; choose widths it runs")
        compute = 2 * layer.macs * self.batch / kernel.ops_per_s
        memory = roofline_bytes(layer, choice, self.batch) / self.device.memory_bandwidth_bytes_per_s
        return max(compute, memory) + self.device.layer_overhead_s

    def lacks(self, layer: LayerInfo) -> str:
        widths = ", ".join(
            f"W{k.weight_bits}A{k.act_bits if k.act_bits < FLOAT_BITS else 'f'}" for k in self.device.kernels
        )
        return (
            f"device {self.device.name} has no kernel for layer {layer.name}'s candidate widths "
            f"(its kernels hold up to {widths})"
        )

    def to_json(self) -> dict:
        return {
            "source": "roofline",
            "spec": self.spec or self.device.name,
            "device": self.device.name,
            "batch": self.batch,
        }

    def describe(self) -> str:
        return f"roofline of {self.device.name}, batch {self.batch}"
