"""`mpq profile`: measure each layer shape of a model on this machine, for the widths it can really run.

Every distinct layer (mpq.latency_table.LayerKey: kind, channels, kernel, stride, groups, input and
output sizes, batch) is built alone from the model's own module (BatchNorm folded) and timed at the
model's real input shape: `warmup` calls, then the median of `repeats` timed calls (eager PyTorch,
Python dispatch included). The kernels tried, each giving rows for one (weight bits, act bits) pair:

    W32 A float  FP32 module as is                                  reference only (no candidate width is 32)
    W8 A8        torch.ao quantized Conv1d/Conv2d/Linear, with       per-channel int8 weights, uint8 input
                 each quantized engine of the build (x86, fbgemm,    already quantized, uint8 output;
                 onednn, qnnpack): the fastest is kept               the row names the engine
    W8 A float   aten._weight_int8pack_mm (Linear only)             int8 weights, float input
    W4 A float   aten._weight_int4pack_mm_for_cpu (Linear only)     4-bit weights in groups of 32-256
                                                                    input columns; out_features % 16 == 0
The int8 conv takes its input in channels_last (the quantized engines' layout), with a module's own
input padding (TF "same", e.g. EfficientNet-Lite's Conv2dStaticSamePadding) folded into the conv as a
deployment does. Before it is timed, each kernel's output is checked against the module's FP32 output
on the same random input: cosine > 0.9 (quantization error costs a few hundredths at most; a kernel computing
another function, e.g. windows shifted by a pixel, scores far lower on uncorrelated inputs). A kernel that
fails on a layer shape, or computes something else, gives no row for it (the summary says which and why);
widths no kernel here runs natively (e.g. 2-7-bit weights with 8-bit inputs) get no rows, never estimated ones.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mpq.cost.latency_table import FLOAT_WIDTH, LatencyRow, LayerKey, layer_key, write_latency_table
from mpq.cost.layer_cost import Choice
from mpq.inputs.graph import LayerInfo, PreparedModel, module_calls_visible, quantizable_modules

DEFAULT_REPEATS = 25
DEFAULT_WARMUP = 5
INT4_GROUP_SIZES = (256, 128, 64, 32)
MIN_COSINE = 0.9  # a kernel output must be this close to the module's FP32 output


def _fp32(module: nn.Module, layer: LayerInfo, x: torch.Tensor) -> Callable[[], object]:
    layer = copy.deepcopy(module)
    return lambda: layer(x)


def _quantized_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 codes as a torch quantized tensor."""
    scales = (weight.detach().abs().flatten(1).amax(dim=1) / 127).clamp(min=1e-8).double()
    return torch.quantize_per_channel(
        weight.detach(), scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8
    )


def _quint8(x: torch.Tensor) -> torch.Tensor:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max((hi - lo) / 255, 1e-8)
    return torch.quantize_per_tensor(x, scale, int(round(-lo / scale)), torch.quint8)


def _conv_padding(module: nn.Module, layer: LayerInfo) -> tuple[tuple[int, ...], list[int]]:
    """The conv padding that gives the layer's measured output size, and what to pad the input by first
    (F.pad order): the module's own padding when it does; otherwise (a module that pads inside its forward,
    e.g. EfficientNet-Lite's Conv2dStaticSamePadding) TF "same" padding, the odd pixel right/bottom, folded
    into the conv as a deployment does. check_same_function then proves the result is the module's function."""
    if module.padding_mode != "zeros":
        raise ValueError(f"padding_mode {module.padding_mode!r}: the quantized convs pad with zeros only")
    dims = list(zip(layer.input_shape[1:], layer.output_shape[1:], module.kernel_size, module.stride, module.dilation))

    def size(size_in: int, kernel: int, stride: int, dilation: int, pad: int) -> int:
        return (size_in + pad - dilation * (kernel - 1) - 1) // stride + 1

    own = (0,) * len(dims) if module.padding == "valid" else module.padding
    if isinstance(own, tuple) and all(size(i, k, s, d, 2 * p) == o for (i, o, k, s, d), p in zip(dims, own)):
        return own, []
    padding, extra = [], []
    for size_in, size_out, kernel, stride, dilation in dims:
        total = (size_out - 1) * stride + dilation * (kernel - 1) + 1 - size_in
        if total < 0:
            raise ValueError(
                f"cannot match the output size {size_out} from input {size_in} with kernel {kernel}, stride {stride}"
            )
        padding.append(total // 2)
        extra.append(total % 2)
    return tuple(padding), [v for e in reversed(extra) for v in (0, e)]


def _int8_static(module: nn.Module, layer: LayerInfo, x: torch.Tensor) -> Callable[[], object]:
    from torch.ao.nn import quantized as nnq

    if isinstance(module, nn.Linear):
        quantized, x_in = nnq.Linear(module.in_features, module.out_features), x
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        padding, extra = _conv_padding(module, layer)
        cls = nnq.Conv1d if isinstance(module, nn.Conv1d) else nnq.Conv2d
        quantized = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            padding,
            module.dilation,
            module.groups,
            module.bias is not None,
        )
        x_in = torch.nn.functional.pad(x, extra) if any(extra) else x
        if x_in.dim() == 4:  # NHWC is the quantized engines' own layout; NCHW would be converted on every call
            x_in = x_in.contiguous(memory_format=torch.channels_last)
    else:
        raise TypeError(f"no quantized kernel for {type(module).__name__}")
    quantized.set_weight_bias(_quantized_weight(module.weight), None if module.bias is None else module.bias.detach())
    with torch.no_grad():
        expected = module(x)
    out_q = _quint8(expected)
    quantized.scale, quantized.zero_point = float(out_q.q_scale()), int(out_q.q_zero_point())
    qx = _quint8(x_in)
    return lambda: quantized(qx)


def check_same_function(module: nn.Module, x: torch.Tensor, run: Callable[[], torch.Tensor]) -> None:
    """A kernel must compute the module's function (up to quantization error): same size, cosine > MIN_COSINE."""
    with torch.no_grad():
        expected, got = module(x), run()
    got = got.dequantize() if got.is_quantized else got
    if got.numel() != expected.numel():
        raise ValueError(f"the kernel's output has shape {tuple(got.shape)}, the module's {tuple(expected.shape)}")
    cosine = float(torch.nn.functional.cosine_similarity(got.flatten().double(), expected.flatten().double(), dim=0))
    if expected.abs().max() > 0 and cosine < MIN_COSINE:
        raise ValueError(f"the kernel's output differs from the module's (cosine {cosine:.3f})")


def _int8_weight_only(module: nn.Module, layer: LayerInfo, x: torch.Tensor) -> Callable[[], object]:
    linear = module
    weight = _quantized_weight(linear.weight)
    codes, scales = weight.int_repr(), weight.q_per_channel_scales().float()
    bias = linear.bias.detach() if linear.bias is not None else None
    flat = x.reshape(-1, linear.in_features)

    def run():
        y = torch.ops.aten._weight_int8pack_mm(flat, codes, scales)
        return y + bias if bias is not None else y

    return run


def _int4_weight_only(module: nn.Module, layer: LayerInfo, x: torch.Tensor) -> Callable[[], object]:
    linear = module
    n, k = linear.weight.shape
    group = next((g for g in INT4_GROUP_SIZES if k % g == 0), None)
    if group is None or n % 16:
        raise ValueError(f"needs in_features divisible by 32 and out_features by 16, not {k} and {n}")
    groups = linear.weight.detach().reshape(n, k // group, group)
    scales = (groups.abs().amax(dim=2) / 7).clamp(min=1e-8)  # symmetric codes -8..7, stored as 0..15
    codes = (torch.clamp(torch.round(groups / scales.unsqueeze(2)), -8, 7) + 8).to(torch.int32).reshape(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
    # the kernel dequantizes (code - 8) * scale + zero: symmetric codes have zero 0
    scales_and_zeros = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=2).contiguous()
    bias = linear.bias.detach() if linear.bias is not None else None
    flat = x.reshape(-1, k)

    def run():
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, group, scales_and_zeros)
        return y + bias if bias is not None else y

    return run


@dataclass(frozen=True)
class Kernel:
    """One way this machine runs a layer natively, for one (weight bits, act bits) pair; `engine`: the
    torch.ao quantized engine it needs set while it is built and run."""

    choice: Choice
    name: str
    build: Callable[[nn.Module, LayerInfo, torch.Tensor], Callable[[], object]]
    engine: str | None = None
    linear_only: bool = False


def kernels() -> list[Kernel]:
    """Every kernel to try; W8A8 once per quantized engine of this torch build (the fastest one is kept)."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    return [
        Kernel(Choice(FLOAT_WIDTH, None), "torch fp32", _fp32),
        *(Kernel(Choice(8, 8), f"torch.ao quantized int8 ({e})", _int8_static, e) for e in engines),
        Kernel(Choice(8, None), "aten._weight_int8pack_mm", _int8_weight_only, linear_only=True),
        Kernel(Choice(4, None), "aten._weight_int4pack_mm_for_cpu", _int4_weight_only, linear_only=True),
    ]


@contextmanager
def quantized_engine(engine: str | None):
    """Set torch's quantized engine for the duration (None: leave it), then restore it."""
    before = torch.backends.quantized.engine
    if engine is not None:
        torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def median_seconds(run: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class ProfileResult:
    """The measured rows, what could not run and why, and the whole FP32 model's time for comparison."""

    rows: list[LatencyRow]
    layers: list[LayerInfo]
    batch: int
    device: str
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # kernel -> layer name -> reason
    model_fp32_s: float = 0.0
    seconds: float = 0.0

    def comments(self, command: str) -> list[str]:
        return [
            f"device: {self.device}",
            f"measured by: {command}",
            "latency_s: median wall time of one call, eager PyTorch",
        ]

    def covered(self, choice: Choice) -> list[LayerInfo]:
        keys = {r.key for r in self.rows if r.choice == choice}
        return [layer for layer in self.layers if layer_key(layer, self.batch) in keys]

    def to_json(self) -> dict:
        """What `mpq profile --json` prints: the device, the batch, every row (as in the CSV table) and the failures."""
        rows = [
            {
                **asdict(r.key),
                "weight_bits": r.choice.weight_bits,
                "act_bits": r.choice.act_bits,
                "latency_s": r.latency_s,
                "backend": r.backend,
            }
            for r in self.rows
        ]
        return {
            "device": self.device,
            "batch": self.batch,
            "seconds": self.seconds,
            "model_fp32_s": self.model_fp32_s,
            "rows": rows,
            "failures": self.failures,
        }

    def summary(self) -> str:
        lines = [
            f"device: {self.device}; batch {self.batch}; {len(self.rows)} rows; profiling took {self.seconds:.1f} s",
            "",
            "| widths | kernels (rows per kernel) | layers covered | sum over the model's layers |",
            "|---|---|---:|---:|",
        ]
        latency = {(r.key, r.choice): r.latency_s for r in self.rows}
        for choice in dict.fromkeys(k.choice for k in kernels()):
            covered = self.covered(choice)
            total = sum(latency[layer_key(layer, self.batch), choice] for layer in covered)
            used = Counter(r.backend for r in self.rows if r.choice == choice)
            names = ", ".join(f"{name} ({count})" for name, count in used.items()) or "-"
            names += " (Linear layers only)" if any(k.linear_only for k in kernels() if k.choice == choice) else ""
            label = "FP32" if choice.weight_bits == FLOAT_WIDTH else choice.label()
            lines.append(
                f"| {label} | {names} | {len(covered)} of {len(self.layers)} | "
                f"{f'{total * 1e3:.3f} ms' if covered else '-'} |"
            )
        lines += [
            "",
            f"whole FP32 model forward at batch {self.batch}: {self.model_fp32_s * 1e3:.3f} ms (the table has its "
            "quantizable layers only; activations, pooling, additions are not in it)",
        ]
        for name, reasons in self.failures.items():
            example, reason = next(iter(reasons.items()))
            lines.append(f"{name}: no rows for {len(reasons)} layer(s), e.g. {example}: {reason}")
        lines.append(
            "other widths (2-7-bit weights with quantized inputs, sub-8-bit inputs) have no native kernel here: no rows"
        )
        return "\n".join(lines)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _distinct_layers(prepared: PreparedModel, batch: int) -> dict[LayerKey, tuple[LayerInfo, nn.Module]]:
    modules = quantizable_modules(prepared.folded)
    distinct: dict[LayerKey, tuple[LayerInfo, nn.Module]] = {}
    for layer in prepared.graph.layers:
        if layer.name in modules:
            distinct.setdefault(layer_key(layer, batch), (layer, modules[layer.name]))
    return distinct


def profile_prepared(
    prepared: PreparedModel,
    batch: int = 1,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    example: torch.Tensor | None = None,
) -> ProfileResult:
    """Time every distinct layer of the (BatchNorm-folded) model with every kernel that runs it here.

    `example`: one real input sample, repeated to `batch` for the whole-model FP32 time (none: not timed).
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    distinct = _distinct_layers(prepared, batch)
    fastest: dict[tuple[LayerKey, Choice], LatencyRow] = {}
    failures: dict[str, dict[str, str]] = {}
    inputs = {
        key: torch.randn((batch, *layer.input_shape), generator=generator) for key, (layer, _) in distinct.items()
    }
    with warnings.catch_warnings():  # torch.ao warns that quantized tensors are deprecated
        warnings.simplefilter("ignore", UserWarning)
        for kernel in kernels():
            for key, (layer, module) in distinct.items():
                if kernel.linear_only and not isinstance(module, nn.Linear):
                    continue
                with quantized_engine(kernel.engine):
                    try:
                        run = kernel.build(module, layer, inputs[key])
                        check_same_function(module, inputs[key], run)
                    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
                        failures.setdefault(kernel.name, {})[layer.name] = _first_line(exc)
                        continue
                    row = LatencyRow(key, kernel.choice, median_seconds(run, repeats, warmup), kernel.name)
                if (key, kernel.choice) not in fastest or row.latency_s < fastest[key, kernel.choice].latency_s:
                    fastest[key, kernel.choice] = row
    rows = list(fastest.values())
    model_fp32_s = 0.0
    if example is not None:
        x = example[:1].expand(batch, *example.shape[1:]).contiguous()
        with module_calls_visible():
            model_fp32_s = median_seconds(lambda: prepared.folded(x), repeats, warmup)
    device = f"{cpu_name()} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    return ProfileResult(
        rows, list(prepared.graph.layers), batch, device, failures, model_fp32_s, time.perf_counter() - start
    )


def write_profile(result: ProfileResult, path: "str | Path", command: str) -> None:
    write_latency_table(path, result.rows, result.comments(command))
