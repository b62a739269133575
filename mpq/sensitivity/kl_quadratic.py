"""The `kl_quadratic` metric: Ω is the second-order term of the KL divergence from the FP32 model's
outputs, taken in the layer's actual quantization error rather than in an isotropic one:

    Ω_l(b) = ½ E_x[δ_xᵀ M_x δ_x],   δ_x = J_x Δ_l(b),   M_x = diag(p_x) − p_x p_xᵀ,

with Δ_l(b) = (Q_b(W_l) − W_l, corrected bias − bias) the change the quantizer really makes (clipped
weights; bias correction when the quantizer has it), J_x the Jacobian of the logits f(x) in the layer's
parameters and p_x = softmax(f(x)) of the FP32 model (over dimension 1, as mpq.verify's KL; further dimensions
are positions, summed). For any network KL(p‖q) = ½ δᵀMδ + O(δ³): the gradient of
the KL at q = p vanishes and its Hessian in the logits is M. HAWQ-V2's Tr(H_l)/n_l·‖ΔW_l‖² is the
expectation of the same form over ΔW with i.i.d. entries; the real ΔW is not i.i.d. (and bias correction
removes exactly its mean output shift, which is where a depthwise layer's curvature lies).

Estimator, unbiased: per sample and draw, z ~ Rademacher over the classes, u = Aᵀz with
A = diag(√p) − √p pᵀ (so AᵀA = M); g_l = ∂(uᵀf)/∂Y_l, the gradient at the layer's output Y_l;
ΔY_l = layer(X_l; Δ_l(b)) (the layer is linear in its parameters); s = ⟨g_l, ΔY_l⟩ = uᵀδ, E_z[s²] = δᵀMδ.
One forward pass, one backward pass per draw and one layer call per layer and width give every layer, width and
output channel (s_c: the same sum over channel c's outputs only; Ω_{l,c}(b) = ½ E[s_c²]). The
standard error is that of the mean of ½ s² over samples and draws.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from mpq.device import drawn_on
from mpq.inputs.graph import module_calls_visible
from mpq.progress import bar
from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.quant.bias_correction import corrected_bias

DRAWS = 2  # Rademacher draws per sample: the probe part of the relative standard error is about 1/sqrt(draws * samples)


@dataclass
class KlQuadratic:
    """Per layer: Ω(b) and its standard error, and per-channel Ω(b); over `samples` samples × `draws` draws."""

    omega: dict[str, dict[int, float]]
    stderr: dict[str, dict[int, float]]
    channel_omega: dict[str, dict[int, np.ndarray]]
    samples: int
    draws: int
    seconds: float

    def scaled(self, factors: dict[str, float]) -> "KlQuadratic":
        """Every layer's Ω, standard error and channels' Ω times its factor (mpq.sensitivity.anchor)."""
        times = lambda table: {n: {b: v * factors[n] for b, v in t.items()} for n, t in table.items()}  # noqa: E731
        return KlQuadratic(
            times(self.omega), times(self.stderr), times(self.channel_omega), self.samples, self.draws, self.seconds
        )


def parameter_deltas(
    module: nn.Module,
    bits: tuple[int, ...],
    clip_ratios: dict[int, torch.Tensor] | None,
    shifts: dict[int, torch.Tensor] | None,
    fmt: WeightFormat = PER_CHANNEL_INT,
) -> dict[int, dict[str, torch.Tensor]]:
    """{b: {"weight": Q_b(W) − W, "bias": corrected bias − bias}} (no bias entry for a layer without one)."""
    weight = module.weight.detach()
    deltas = {}
    for b in bits:
        ratio = None if clip_ratios is None else clip_ratios[b]
        delta = {"weight": fmt.fake_quantize(weight, b, ratio).reshape(weight.shape) - weight}
        bias = getattr(module, "bias", None)
        if bias is not None and not isinstance(module, nn.Embedding):
            new_bias = corrected_bias(bias.detach(), shifts[b]) if shifts and b in shifts else bias.detach()
            delta["bias"] = new_bias.to(bias.dtype) - bias.detach()
        deltas[b] = delta
    return deltas


def rademacher_cotangent(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """u = Aᵀz for z ~ Rademacher, A = diag(√p) − √p pᵀ along dimension 1 (the classes): E[u uᵀ] = diag(p) − p pᵀ."""
    z = drawn_on(torch.randint(0, 2, p.shape, generator=generator), p.device).to(p.dtype).mul_(2).sub_(1)
    root_z = p.sqrt() * z
    return root_z - p * root_z.sum(1, keepdim=True)


def output_change(module: nn.Module, x: torch.Tensor, delta: dict[str, torch.Tensor]) -> torch.Tensor:
    """ΔY = layer(x; Δ): the output change the parameter change makes (the layer is linear in its parameters)."""
    if isinstance(module, nn.Embedding):
        return nn.functional.embedding(x, delta["weight"])
    params = dict(delta)
    if getattr(module, "bias", None) is not None and "bias" not in params:
        params["bias"] = torch.zeros_like(module.bias)
    return functional_call(module, params, (x,))


def channel_products(module: nn.Module, x: torch.Tensor, g: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """[batch, out_channels]: ⟨g, ΔY⟩ summed over each output channel's share of the output."""
    if isinstance(module, nn.Embedding):  # channel = row of the table = token id
        per_position = (g * dy).sum(-1).reshape(len(x), -1)
        out = torch.zeros(len(x), module.num_embeddings, dtype=per_position.dtype, device=per_position.device)
        return out.scatter_add_(1, x.reshape(len(x), -1), per_position)
    prod = g * dy
    if isinstance(module, nn.Linear):
        return prod.reshape(len(x), -1, prod.shape[-1]).sum(1)
    return prod.reshape(prod.shape[0], prod.shape[1], -1).sum(-1)


def _capture(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor):
    """Forward x with every named layer's input and output kept; returns (logits, inputs, outputs)."""
    inputs, outputs, handles = {}, {}, []
    for name, m in modules.items():

        def hook(mod, args, out, name=name):
            inputs[name] = args[0].detach()
            outputs[name] = out

        handles.append(m.register_forward_hook(hook))
    try:
        with module_calls_visible():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, inputs, outputs


def kl_quadratic_omegas(
    model: nn.Module,
    x: torch.Tensor,
    deltas: dict[str, dict[int, dict[str, torch.Tensor]]],
    batch_size: int = 16,
    draws: int = DRAWS,
    seed: int = 0,
    progress: bool | None = None,
) -> KlQuadratic:
    """Ω_l(b) over the samples x of every layer and width of `deltas` ({layer: parameter_deltas(...)}; see the
    module docstring)."""
    started = time.perf_counter()
    model.eval()
    layer_names = list(deltas)
    bits = tuple(next(iter(deltas.values()))) if deltas else ()
    modules = {n: model.get_submodule(n) for n in layer_names}
    generator = torch.Generator().manual_seed(seed)
    sum_sq = {n: {b: 0.0 for b in bits} for n in layer_names}
    sum_fourth = {n: {b: 0.0 for b in bits} for n in layer_names}
    channel_sum_sq = {n: {b: 0.0 for b in bits} for n in layer_names}
    with bar(len(x), "kl_quadratic", progress, unit="sample") as shown:
        for start in range(0, len(x), batch_size):
            logits, inputs, outputs = _capture(model, modules, x[start : start + batch_size])
            p = torch.softmax(logits.detach().double(), 1)
            # every draw's gradients at the layer outputs first (the weights' are not asked for), then each layer's
            # output change once per width: only one ΔY is alive at a time, not every layer's at every width
            grads_per_draw = [
                torch.autograd.grad(
                    logits,
                    [outputs[n] for n in layer_names],
                    rademacher_cotangent(p, generator).to(logits.dtype),
                    retain_graph=True,
                    allow_unused=True,
                )
                for _ in range(draws)
            ]
            with torch.no_grad():
                for i, n in enumerate(layer_names):
                    for b in bits:
                        change = output_change(modules[n], inputs[n], deltas[n][b])
                        for grads in grads_per_draw:
                            if grads[i] is None:  # the layer does not reach the output: its Ω is 0
                                continue
                            per_channel = channel_products(modules[n], inputs[n], grads[i], change).double()
                            half_sq = 0.5 * per_channel.sum(1) ** 2
                            sum_sq[n][b] += float(half_sq.sum())
                            sum_fourth[n][b] += float((half_sq**2).sum())
                            channel_sum_sq[n][b] = channel_sum_sq[n][b] + (0.5 * per_channel**2).sum(0).cpu().numpy()
            del logits, outputs, grads_per_draw
            shown.update(min(batch_size, len(x) - start))
    count = len(x) * draws
    omega = {n: {b: sum_sq[n][b] / count for b in bits} for n in layer_names}
    stderr = {n: {b: _stderr_of_mean(sum_sq[n][b], sum_fourth[n][b], count) for b in bits} for n in layer_names}
    channel = {n: {b: np.asarray(channel_sum_sq[n][b], dtype=np.float64) / count for b in bits} for n in layer_names}
    return KlQuadratic(omega, stderr, channel, len(x), draws, time.perf_counter() - started)


def _stderr_of_mean(total: float, total_sq: float, count: int) -> float:
    if count < 2:
        return float("nan")
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0) * count / (count - 1)
    return float(np.sqrt(variance / count))
