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
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from mpq.device import drawn_on
from mpq.inputs.graph import module_calls_visible
from mpq.memory import release_free_memory
from mpq.progress import bar
from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.quant.bias_correction import corrected_bias
from mpq.quant.reference import logit_batch
from mpq.sensitivity.distributed import Ranks

KEEP_DELTA_BYTES = 1 << 28  # layers' parameter changes kept between batches up to this size, remade beyond it
# a layer whose changes at every width pass this size takes them one width at a time (an LM head: 7 × 262 MB at
# 32,000 × 2048), its products through ΔY = x ΔWᵀ, so that no more than one width's change is held
WIDTH_AT_A_TIME_BYTES = 1 << 29
# the layers' inputs and outputs a batch holds for its backward passes (autograd's graph keeps about as much again,
# until the gradients are taken): the batch is cut to stay within it
CAPTURE_BYTES = 1 << 30
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
    quantized: Callable[[int], torch.Tensor] | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """{b: {"weight": Q_b(W) − W, "bias": corrected bias − bias}} (no bias entry for a layer without one);
    `quantized(b)`, when given, is Q_b(W) (kept by the caller) instead of the format's fake_quantize."""
    weight = module.weight.detach()
    deltas = {}
    for b in bits:
        ratio = None if clip_ratios is None else clip_ratios[b]
        q = quantized(b) if quantized is not None else fmt.fake_quantize(weight, b, ratio)
        delta = {"weight": q.reshape(weight.shape).sub_(weight)}  # q is a new tensor: its buffer becomes Δ
        bias = getattr(module, "bias", None)
        if bias is not None and not isinstance(module, nn.Embedding):
            new_bias = corrected_bias(bias.detach(), shifts[b]) if shifts and b in shifts else bias.detach()
            delta["bias"] = new_bias.to(bias.dtype) - bias.detach()
        deltas[b] = delta
    return deltas


def _rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """±1 in the shape, dtype and device of `like`, drawn on the CPU from `generator`."""
    return drawn_on(torch.randint(0, 2, like.shape, generator=generator), like.device).to(like.dtype).mul_(2).sub_(1)


def rademacher_cotangent(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """u = Aᵀz for z ~ Rademacher, A = diag(√p) − √p pᵀ along dimension 1 (the classes): E[u uᵀ] = diag(p) − p pᵀ."""
    root_z = p.sqrt() * _rademacher(p, generator)
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


def sequence_products(x: torch.Tensor, grads: list[torch.Tensor], changes: dict[int, dict[str, torch.Tensor]]) -> list:
    """Per draw (gradient g in `grads`), {b: channel_products at width b} of a linear layer over positions ([batch,
    positions, in]) without forming ΔY: Σ_t g[t,c]·(ΔW[c]·x[t]) = ΔW[c]·G[c], G = Σ_t g[t]ᵀx[t] per sample: one
    matmul per sample shared by every width, then every width's ΔW[c]·G[c] in one batched product."""
    bits = list(changes)
    stacked = torch.stack([changes[b]["weight"] for b in bits], 1)  # [out, widths, in]
    bias = torch.stack([changes[b]["bias"] for b in bits], 1) if "bias" in changes[bits[0]] else None
    x3 = x.reshape(len(x), -1, x.shape[-1])
    per_draw = []
    for g in grads:
        g3, rows = g.reshape(len(g), -1, g.shape[-1]), []
        for i in range(len(g3)):  # one sample's [out, in] at a time: the memory of one weight, not of the batch's
            per_channel = torch.bmm(stacked, (g3[i].T @ x3[i].to(g.dtype)).unsqueeze(2)).squeeze(2)
            rows.append(per_channel + g3[i].sum(0)[:, None] * bias if bias is not None else per_channel)
        products = torch.stack(rows)  # [batch, out, widths]
        per_draw.append({b: products[:, :, k] for k, b in enumerate(bits)})
    return per_draw


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


@dataclass
class LayerDeltas:
    """Each layer's parameter change per width, made when asked (`of(name, bits)`: {b: {param: change}} for the
    widths `bits`), so that the whole model's changes at every width are never held at once; a layer's changes at
    every width kept while they total at most `keep_bytes`."""

    names: list[str]
    bits: tuple[int, ...]
    of: Callable[[str, tuple[int, ...]], dict[int, dict[str, torch.Tensor]]]
    keep_bytes: int = KEEP_DELTA_BYTES
    _kept: dict = field(default_factory=dict, repr=False)
    _kept_bytes: int = 0

    @classmethod
    def of_table(cls, table: dict[str, dict[int, dict[str, torch.Tensor]]]) -> "LayerDeltas":
        bits = tuple(next(iter(table.values()))) if table else ()
        return cls(list(table), bits, lambda name, widths: {b: table[name][b] for b in widths})

    def __call__(self, name: str, bits: tuple[int, ...] | None = None) -> dict[int, dict[str, torch.Tensor]]:
        bits = self.bits if bits is None else bits
        if name in self._kept:
            return {b: self._kept[name][b] for b in bits}
        made = self.of(name, bits)
        size = sum(t.numel() * t.element_size() for per in made.values() for t in per.values())
        if bits == self.bits and self._kept_bytes + size <= self.keep_bytes:
            self._kept[name], self._kept_bytes = made, self._kept_bytes + size
        return made

    def groups(self, module: nn.Module) -> list[tuple[int, ...]]:
        """The widths taken together for `module`: all of them, or one at a time when their changes would pass
        WIDTH_AT_A_TIME_BYTES."""
        every = module.weight.numel() * module.weight.element_size() * len(self.bits)
        return [self.bits] if every <= WIDTH_AT_A_TIME_BYTES else [(b,) for b in self.bits]


class _Sums:
    """Running sums of ½s² (and its square, and per channel) per layer and width, added up over ranks."""

    def __init__(self, names: list[str], bits: tuple[int, ...]) -> None:
        self.names, self.bits = names, bits
        self.sq = {n: {b: 0.0 for b in bits} for n in names}
        self.fourth = {n: {b: 0.0 for b in bits} for n in names}
        self.channel = {n: {b: 0.0 for b in bits} for n in names}

    def add(self, name: str, b: int, per_channel: torch.Tensor) -> None:
        half_sq = 0.5 * per_channel.sum(1) ** 2
        self.sq[name][b] += float(half_sq.sum())
        self.fourth[name][b] += float((half_sq**2).sum())
        self.channel[name][b] = self.channel[name][b] + (0.5 * per_channel**2).sum(0).cpu().numpy()

    def result(self, ranks: Ranks, samples: int, draws: int, seconds: float) -> KlQuadratic:
        keys = [(n, b) for n in self.names for b in self.bits]
        flat = [np.asarray([self.sq[n][b], self.fourth[n][b]]) for n, b in keys]
        flat += [np.asarray(self.channel[n][b], dtype=np.float64) for n, b in keys]
        summed = ranks.sum_arrays(flat)
        count = samples * draws
        omega = {n: {} for n in self.names}
        stderr = {n: {} for n in self.names}
        channel = {n: {} for n in self.names}
        for i, (n, b) in enumerate(keys):
            total, total_sq = summed[i]
            omega[n][b] = float(total) / count
            stderr[n][b] = _stderr_of_mean(float(total), float(total_sq), count)
            channel[n][b] = summed[len(keys) + i] / count
        return KlQuadratic(omega, stderr, channel, samples, draws, seconds)


def _chunks(total: int, batch_size: int, logit_elements: int) -> list[tuple[int, int]]:
    """(start, stop) of every batch, cut smaller where its logits would pass mpq.quant.reference.MAX_LOGIT_ELEMENTS."""
    step = logit_batch(batch_size, logit_elements)
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _batch(model, modules, x, deltas: LayerDeltas, draw_cotangents, sums: _Sums) -> None:
    """One batch's contributions: every draw's gradients at the layer outputs first (the weights' are not asked
    for), then each layer's products at each width, with the layer's changes made for this batch only."""
    logits, inputs, outputs = _capture(model, modules, x)
    p = logits.detach().double()
    names = deltas.names
    grads_per_draw = [
        list(
            torch.autograd.grad(
                logits, [outputs[n] for n in names], u.to(logits.dtype), retain_graph=True, allow_unused=True
            )
        )
        for u in draw_cotangents(p)
    ]
    del logits, p, outputs  # the outputs hold autograd's graph: freed before the products, which need only grads
    release_free_memory()  # the graph's activations, freed to the allocator's heap: back to the system before the Δs
    with torch.no_grad():
        for i, n in enumerate(names):
            module, layer_x = modules[n], inputs.pop(n)
            if all(grads[i] is None for grads in grads_per_draw):  # the layer does not reach the output: Ω is 0
                continue
            groups = deltas.groups(module)
            for widths in groups:
                changes = deltas(n, widths)
                if isinstance(module, nn.Linear) and layer_x.dim() > 2 and len(groups) == 1:
                    for products in sequence_products(layer_x, [grads[i] for grads in grads_per_draw], changes):
                        for b, per_channel in products.items():
                            sums.add(n, b, per_channel.double())
                    continue
                for b in widths:
                    change = output_change(module, layer_x, changes[b])
                    for grads in grads_per_draw:
                        sums.add(n, b, channel_products(module, layer_x, grads[i], change).double())
            for grads in grads_per_draw:  # this layer's gradients: freed as the layers are done
                grads[i] = None


def kl_quadratic_omegas(
    model: nn.Module,
    x: torch.Tensor,
    deltas: "dict[str, dict[int, dict[str, torch.Tensor]]] | LayerDeltas",
    batch_size: int = 16,
    draws: int = DRAWS,
    seed: int = 0,
    progress: bool | None = None,
    form: str = "kl",
) -> KlQuadratic:
    """Ω_l(b) over the samples x of every layer and width of `deltas` (a LayerDeltas, or {layer:
    parameter_deltas(...)}; see the module docstring). `form` "mse": M = 2I/n (n output elements per sample), so
    that Ω is the linearized mean squared change of the outputs (embeddings), not of their softmax's KL. Under
    torchrun each rank takes every size-th batch; every rank draws every batch's cotangents from the one seeded
    generator, so the ranks sum to one process's numbers."""
    started = time.perf_counter()
    model.eval()
    deltas = deltas if isinstance(deltas, LayerDeltas) else LayerDeltas.of_table(deltas)
    modules = {n: model.get_submodule(n) for n in deltas.names}
    generator = torch.Generator().manual_seed(seed)
    ranks = Ranks.current()
    sums = _Sums(deltas.names, deltas.bits)
    per_sample, held = _one_sample(model, modules, x[:1].to(_device(model)))
    chunks = _chunks(len(x), max(1, min(batch_size, CAPTURE_BYTES // max(held, 1))), per_sample)

    def cotangents(outputs):
        if form == "mse":  # M = (2 / elements) I: ½E[s²] = the mean squared output change, per sample
            scale = (2.0 / outputs[0].numel()) ** 0.5
            return [_rademacher(outputs, generator).mul_(scale) for _ in range(draws)]
        p = torch.softmax(outputs, 1)
        return [rademacher_cotangent(p, generator) for _ in range(draws)]

    with bar(len(x), "kl_quadratic", progress, unit="sample") as shown:
        for i, (start, stop) in enumerate(chunks):
            if i % ranks.size != ranks.rank:
                for _ in range(draws):  # the draws of another rank's batch: the generator moves on as theirs does
                    torch.randint(0, 2, ((stop - start) * per_sample,), generator=generator)
                continue
            _batch(model, modules, x[start:stop].to(_device(model)), deltas, cotangents, sums)
            release_free_memory()
            shown.update((stop - start) * ranks.size)
    return sums.result(ranks, len(x), draws, time.perf_counter() - started)


def _one_sample(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> tuple[int, int]:
    """(the logits' elements, the bytes of the layers' inputs and outputs) of one sample's batch."""
    with torch.no_grad():
        logits, inputs, outputs = _capture(model, modules, x)
    tensors = {t.data_ptr(): t for t in (*inputs.values(), *outputs.values()) if isinstance(t, torch.Tensor)}
    return logits.numel(), sum(t.numel() * t.element_size() for t in tensors.values())


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _stderr_of_mean(total: float, total_sq: float, count: int) -> float:
    if count < 2:
        return float("nan")
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0) * count / (count - 1)
    return float(np.sqrt(variance / count))
