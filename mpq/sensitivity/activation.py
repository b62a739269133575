"""Activation sensitivity (HAWQ-V2): the loss's curvature with respect to each quantized layer's input.

A zero perturbation δ_g, shaped like one sample's input, is added (forward pre-hook, broadcast over the
batch) to the input of every layer of group g (a group: the layers that read one tensor and so share
one activation quantizer; else one layer). For the mean loss L over a batch,

    ∇²_δ L = (1/B) Σ_i ∇²_{x_i} loss_i,   so   Tr(H_act,g) = mean over samples of Tr(∇²_x loss_i),

the per-sample trace of the Hessian with respect to the input. The δ_g are the `.weight` parameters
of the submodules `delta.<g>` of a wrapper model, so every weight metric (mpq.sensitivity.metrics)
applies unchanged: Hutchinson traces (with standard errors, adaptive stopping, checkpoints), the
empirical Fisher (mean over samples of ||∇_x loss_i||²) or the top eigenvalue of ∇²_δ L.
Then, with m_g the elements of one sample's input and the verifier's min-max affine quantizer Q_a
(mpq.quant.MinMaxObserver ranges over the data),

    Ω_act,g(a) = T_g / m_g · E_i ||Q_a(x_i) − x_i||²,

split equally over the group's layers (they take one activation width, so the group's sum is Ω_act,g).
For output_mse (output_kl), Ω_act,g(a) is the measured output MSE (KL to FP32) with only that input quantized.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mpq.device import model_device
from mpq.inputs.graph import LayerInfo, module_calls_visible
from mpq.quant.affine import ActQuantParams, MinMaxObserver


@dataclass
class ActivationSensitivity:
    """One layer's input: the curvature of its group's input (trace-like, see module doc) and errors."""

    group: list[str]  # the layers reading this input (this one included)
    trace: float
    trace_stderr: float
    probes: int
    elements: int  # m: elements of one sample's input
    quant_error: dict[int, float]  # E_i ||Q_a(x_i) - x_i||^2 per width a
    measured_omega: dict[int, float] | None = None  # output_mse, output_kl: the group's measured Ω per width
    details: dict = field(default_factory=dict)  # the metric's own fields (e.g. top_eigenvalue, output_sqnr_db)

    def omega(self, bits: int | None, margin: float = 0.0) -> float:
        """This layer's share of T/m · E||Q_a(x) − x||² (0 for a float input)."""
        if bits is None:
            return 0.0
        if self.measured_omega is not None:
            return self.measured_omega[bits] / len(self.group)
        bounded = max(self.trace + margin * self.trace_stderr, 0.0)
        return bounded / self.elements * self.quant_error[bits] / len(self.group)

    def warning(self, metric, tol: float) -> str | None:
        """Why the estimate is not to be trusted under `metric` (a registry Metric), or None."""
        return metric.warning(self.trace, self.trace_stderr, tol, self.details)

    def to_json(self) -> dict:
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
        return {
            "group": self.group,
            "elements": self.elements,
            "hessian_trace": finite(self.trace),
            "hessian_trace_stderr": finite(self.trace_stderr),
            "probes": self.probes,
            "quant_error": {str(b): e for b, e in self.quant_error.items()},
            **self.details,  # under output_mse / output_kl, the measured Omega per width
        }


def input_groups(layers: list[LayerInfo], act_tie_groups: list[list[str]]) -> list[list[str]]:
    """Groups of layers whose input is one activation quantizer, in execution order; embeddings
    (integer ids) have none."""
    quantized = [layer.name for layer in layers if layer.kind != "embedding"]
    owner = {name: tuple(g) for g in act_tie_groups for name in g}
    groups: list[list[str]] = []
    for name in quantized:
        group = [n for n in owner.get(name, (name,)) if n in quantized]
        if group not in groups:
            groups.append(group)
    return groups


class _Delta(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))


class PerturbedInputs(nn.Module):
    """`model` with δ_g (parameter `delta.<g>.weight`, zero) added to the input of each layer of group g."""

    def __init__(self, model: nn.Module, shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.model = model
        self.delta = nn.ModuleList(_Delta(s) for s in shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def names(self) -> list[str]:
        return [f"delta.{g}" for g in range(len(self.delta))]


@contextmanager
def perturbed_inputs(model: nn.Module, groups: list[list[str]], shapes: list[tuple[int, ...]]):
    """The wrapper of `model` whose δ's perturb each group's input; the hooks go when the block ends.

    A call of a layer with an input of another shape (a module called twice) is left unperturbed.
    """
    wrapper = PerturbedInputs(model, shapes)
    wrapper.delta.to(model_device(model))  # the δ's where the model runs
    handles = []

    def add_delta(module, args, delta):
        if args and args[0].shape[1:] == delta.weight.shape:  # read at call time: functional_call may swap it
            return (args[0] + delta.weight, *args[1:])
        return None

    for group, delta in zip(groups, wrapper.delta):
        for name in group:
            handles.append(
                model.get_submodule(name).register_forward_pre_hook(lambda m, a, d=delta: add_delta(m, a, d))
            )
    try:
        yield wrapper
    finally:
        for h in handles:
            h.remove()


def act_quant_params(ranges: dict[str, tuple[float, float]], name: str, bits: int) -> ActQuantParams:
    """The verifier's activation quantizer of layer `name` at `bits` (min-max range `ranges[name]`)."""
    observer = MinMaxObserver()
    observer.lo, observer.hi = ranges[name]
    return observer.params(bits)


def input_quant_errors(
    model: nn.Module,
    layer_names: list[str],
    ranges: dict[str, tuple[float, float]],
    x: torch.Tensor,
    bits: tuple[int, ...],
    batch_size: int = 25,
) -> dict[str, dict[int, float]]:
    """{layer: {a: E_i ||Q_a(x_i) − x_i||²}}, x_i the layer's input for sample i, Q_a the verifier's quantizer."""
    sums = {n: np.zeros(len(bits)) for n in layer_names}

    def record(name: str, inputs: torch.Tensor) -> None:
        for j, b in enumerate(bits):
            sums[name][j] += float(
                (act_quant_params(ranges, name, b).fake_quantize(inputs) - inputs).double().pow(2).sum()
            )

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: record(n, a[0])) for n in layer_names]
    try:
        with torch.inference_mode(), module_calls_visible():
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {n: {b: float(s[j] / len(x)) for j, b in enumerate(bits)} for n, s in sums.items()}
