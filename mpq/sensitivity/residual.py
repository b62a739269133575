"""The Gauss-Newton residual: Tr(H_ll) = Tr(G_ll) + Tr(R_ll) for the layers after which the network is curved.

    H_ll = G_ll + R_ll,   G_ll = (1/N) Σ_i J_iᵀ ∇²_f ℓ_i J_i,   R_ll = (1/N) Σ_i Σ_c ḡ_ic · ∂²f_ic/∂W_l²,
    ḡ_i = ∂ℓ_i/∂f_i, the loss's gradient in sample i's output f_i at the trained weights.

R_ll is the Hessian in W_l of the contracted output s(W) = (1/N) Σ_i ⟨ḡ_i, f_i(W)⟩ with ḡ held fixed
(`contracted_output`), so the Hessian engine (mpq.sensitivity.hessian: per-layer Hutchinson probing,
either Hessian-vector product, chunks, torchrun ranks) estimates Tr(R_ll) with s in place of the loss.
Tr(G_ll) comes from mpq.sensitivity.metrics.gauss_newton_traces (first derivatives only).

Which layers need it (ResidualTest): R_ll = 0 where every op after layer l's output is piecewise linear
(ReLU, ReLU6, max pooling, folded BatchNorm, adds, linear layers), and for every layer where ḡ = 0 (the
`kl` loss at the FP32 weights). It is measured, not read from the ops' names: one product R_ll v per
layer (v Rademacher) on the DETECT_SAMPLES samples of most Gauss-Newton curvature, and R_ll is taken
for zero when

    √n_l · ‖R_ll v‖ ≤ ZERO_RTOL · Tr(G_ll) on those samples.

E‖R v‖² = ‖R‖_F² and |Tr R| ≤ √n ‖R‖_F, so this says the residual moves the trace by at most about
ZERO_RTOL of it. Autograd's second derivative of a piecewise-linear op is exactly zero, so a ReLU network
gives R v = 0 exactly (0 of 50 layers of the built-in EfficientNet-Lite0 need R), while a curved layer
gives a ratio four orders of magnitude above ZERO_RTOL (0.98-11 on tests/residual_models.py's CurvedBlock).
A forward-graph analysis (torch.fx, or the output's grad_fn chain) would cost nothing, but needs a table
of which ops are linear (user ops, fused kernels, functions linear in part), fails where fx cannot trace,
and cannot see ḡ; the measured test costs one small product per layer.

How Tr(R_ll) is estimated: Hutchinson probes v_lᵀ R_ll v_l, one Hessian-vector product of s per layer and
probe (the cost of a probe of H_ll), until the sum's standard error √(se_G² + se_R²) is under `tol` of
Tr(G_ll) + Tr(R_ll), or se_R is a third of se_G, or a cap (mpq.sensitivity.stopping.KnownPart). Not
per-layer Hutchinson on H_ll: a probe costs the same, but var(vᵀRv) = 2 Σ_{i≠j} R_ij² leaves out G's
off-diagonal part, and G is already exact on the data; measured 1.2-9x lower than var(vᵀHv) per probe on
tests/residual_models.py's CurvedBlock (reports/residual.md).

A model without second derivatives (NoSecondDerivative: e.g. PyTorch's CPU flash attention behind Hugging
Face's SDPA attention) keeps Tr(G) alone, with a note saying so and naming attn_implementation="eager".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from mpq.progress import note
from mpq.sensitivity.hessian import (
    HessianTraces,
    ProbeProblem,
    _rademacher,
    hutchinson_traces,
    probe_generator,
    weights_requiring_grad,
)
from mpq.sensitivity.hvp import NoSecondDerivative
from mpq.sensitivity.metrics import LossFn, gauss_newton_traces
from mpq.sensitivity.settings import ProbeSettings
from mpq.sensitivity.stopping import KnownPart

DETECT_SAMPLES = 2  # samples the residual test runs on
ZERO_RTOL = 1e-4  # R_ll is zero when √n ‖R_ll v‖ is under this share of Tr(G_ll)
TEST_STREAM = 1  # the test's vectors: probe_generator's stream 1, independent of the probes'
GAUSS_NEWTON, WITH_RESIDUAL, SKIPPED = (
    "gauss-newton",
    "gauss-newton+residual",
    "gauss-newton (residual skipped)",
)  # estimators
SKIPPED_NOTE = (
    "residual Tr(R) skipped, so the traces are Tr(G) alone, equal to Tr(H) only where the network is piecewise "
    "linear after the layer: "
    'this model has no second derivatives ({detail}); load a Hugging Face model with attn_implementation="eager" '
    "to measure it"
)


def contracted_output(output: torch.Tensor, gbar: torch.Tensor) -> torch.Tensor:
    """s = (1/n) Σ_i ⟨ḡ_i, f_i⟩ over a batch: with ḡ fixed, its Hessian in the weights is R."""
    return (output * gbar).sum() / len(output)


def output_gradients(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, batch_size: int
) -> torch.Tensor:
    """ḡ_i = ∂ℓ_i/∂f_i of every sample: n · ∂L/∂f of the batch-mean loss L, batch by batch."""
    parts = []
    for start in range(0, len(x), batch_size):
        xb, tb = x[start : start + batch_size], targets[start : start + batch_size]
        with torch.no_grad():
            output = model(xb)
        output = output.detach().requires_grad_(True)
        parts.append(torch.autograd.grad(loss_fn(output, tb), output)[0] * len(xb))
    return torch.cat(parts)


@dataclass
class ResidualTest:
    """Per layer the ratio √n_l ‖R_ll v‖ / Tr(G_ll) on the test samples; the residual is needed where it exceeds
    ZERO_RTOL."""

    ratio: np.ndarray  # [layers]
    samples: list[int]  # the samples it ran on

    @property
    def needs(self) -> np.ndarray:
        return self.ratio > ZERO_RTOL


def _test_samples(gauss_newton: HessianTraces) -> np.ndarray:
    """The DETECT_SAMPLES samples of largest Σ_l G_l,i / Tr(G_l) (where ḡ and so R are largest too)."""
    per_sample = gauss_newton.sample_trace
    relative = (per_sample / np.maximum(per_sample.mean(axis=0), 1e-300)).sum(axis=1)
    return np.argsort(-relative, kind="stable")[:DETECT_SAMPLES]


def residual_test(
    model, names: list[str], x, targets, loss_fn: LossFn, gauss_newton: HessianTraces, settings: ProbeSettings
) -> ResidualTest:
    """One product R_ll v per layer on the test samples (see the module docstring)."""
    samples = _test_samples(gauss_newton)
    index = torch.as_tensor(samples, dtype=torch.long)
    xs = x[index]
    gbar = output_gradients(model, xs, targets[index], loss_fn, len(xs))
    scale = gauss_newton.sample_trace[samples].mean(axis=0)
    weights = [model.get_submodule(n).weight for n in names]
    problem = ProbeProblem(
        model, [f"{n}.weight" for n in names], weights, xs, gbar, contracted_output, [torch.arange(len(xs))], settings
    )
    generator = probe_generator(settings.seed, 0, TEST_STREAM)
    ratio = np.zeros(len(names))
    with weights_requiring_grad(model, weights):
        for i, w in enumerate(weights):
            bound = math.sqrt(w.numel()) * float(
                problem.layer_hvp(xs, gbar, i, _rademacher(w.shape, generator, w.device)).double().norm()
            )
            ratio[i] = bound / scale[i] if scale[i] > 0 else (0.0 if bound == 0 else math.inf)
    return ResidualTest(ratio, samples.tolist())


def residual_traces(
    model, names: list[str], x, targets, loss_fn: LossFn, known: KnownPart, settings: ProbeSettings, progress
) -> HessianTraces:
    """Tr(R_ll) per named layer and channel by per-layer Hutchinson probing of the contracted output,
    the tolerance on the sum with `known` (the layers' Gauss-Newton traces)."""
    gbar = output_gradients(model, x, targets, loss_fn, settings.batch_size)
    return hutchinson_traces(
        model, names, x, gbar, settings, progress, loss_fn=contracted_output, known=known, label="residual"
    )


@dataclass
class _Parts:
    """Per layer: the estimator, the residual's trace, standard error and probes, the test's ratio."""

    estimator: list[str]
    residual_trace: np.ndarray
    residual_stderr: np.ndarray
    residual_probes: np.ndarray
    ratio: np.ndarray

    def details(self, gauss_newton: HessianTraces) -> dict[str, list]:
        finite = lambda values: [float(v) if math.isfinite(v) else None for v in values]  # noqa: E731
        return {
            "estimator": list(self.estimator),
            "gauss_newton_trace": finite(gauss_newton.trace),
            "gauss_newton_trace_stderr": finite(gauss_newton.stderr),
            "residual_trace": finite(self.residual_trace),
            "residual_trace_stderr": finite(self.residual_stderr),
            "residual_probes": [int(p) for p in self.residual_probes],
            "residual_test_ratio": finite(self.ratio),
        }


def _combined(
    gauss_newton: HessianTraces, test: ResidualTest, flagged: list[int], residual: HessianTraces | None, seconds: float
) -> tuple[HessianTraces, dict[str, list]]:
    """Tr(G) + Tr(R) on the flagged layers (and channels), standard errors combined in quadrature."""
    n = len(gauss_newton.layer_names)
    parts = _Parts([GAUSS_NEWTON] * n, np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64), test.ratio)
    trace, stderr = gauss_newton.trace.copy(), gauss_newton.stderr.copy()
    channel_trace, channel_stderr = (
        [c.copy() for c in gauss_newton.channel_trace],
        [c.copy() for c in gauss_newton.channel_stderr],
    )
    capped = np.zeros(n, dtype=bool) if gauss_newton.capped is None else gauss_newton.capped.copy()
    for j, i in enumerate(flagged):
        parts.estimator[i] = WITH_RESIDUAL
        parts.residual_trace[i], parts.residual_stderr[i], parts.residual_probes[i] = (
            residual.trace[j],
            residual.stderr[j],
            residual.probes_of(j),
        )
        trace[i] += residual.trace[j]
        stderr[i] = math.hypot(stderr[i], residual.stderr[j])
        channel_trace[i] = channel_trace[i] + residual.channel_trace[j]
        channel_stderr[i] = np.hypot(channel_stderr[i], residual.channel_stderr[j])
        capped[i] = capped[i] or residual.capped[j]
    traces = replace(
        gauss_newton,
        trace=trace,
        stderr=stderr,
        channel_trace=channel_trace,
        channel_stderr=channel_stderr,
        seconds=seconds,
        stop_reason=residual.stop_reason if residual is not None else gauss_newton.stop_reason,
        capped=capped,
        sample_trace=None,
    )
    return traces, parts.details(gauss_newton)


def _skipped(
    gauss_newton: HessianTraces, missing: NoSecondDerivative, seconds: float, progress
) -> tuple[HessianTraces, dict[str, list]]:
    """Tr(G) alone, with the note that says why."""
    n = len(gauss_newton.layer_names)
    text = SKIPPED_NOTE.format(detail=missing.detail)
    note(f"gauss_newton: {text}", progress)
    nan = np.full(n, np.nan)
    parts = _Parts([SKIPPED] * n, nan, nan, np.zeros(n, dtype=np.int64), nan)
    return replace(gauss_newton, seconds=seconds, notes=[*gauss_newton.notes, text], sample_trace=None), parts.details(
        gauss_newton
    )


def gauss_newton_hessian_traces(
    model: nn.Module,
    names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    settings: ProbeSettings,
    progress,
    loss_fn: LossFn,
) -> tuple[HessianTraces, dict[str, list]]:
    """Tr(H_ll) = Tr(G_ll) on every layer, + Tr(R_ll) on those the ResidualTest finds curved after them, with the
    per-layer fields `estimator`, `gauss_newton_trace[_stderr]`, `residual_trace[_stderr]`, `residual_probes`,
    `residual_test_ratio`. The residual's probing gets what is left of `max_seconds` after Tr(G)."""
    started = time.perf_counter()
    gauss_newton = gauss_newton_traces(model, names, x, targets, settings, progress)
    try:
        test = residual_test(model, names, x, targets, loss_fn, gauss_newton, settings)
        flagged = [i for i in range(len(names)) if test.needs[i]]
        residual = None
        if flagged:
            known = KnownPart(gauss_newton.trace[flagged], gauss_newton.stderr[flagged])
            left = replace(settings, max_seconds=max(settings.max_seconds - (time.perf_counter() - started), 1e-3))
            residual = residual_traces(model, [names[i] for i in flagged], x, targets, loss_fn, known, left, progress)
    except NoSecondDerivative as missing:
        return _skipped(gauss_newton, missing, time.perf_counter() - started, progress)
    return _combined(gauss_newton, test, flagged, residual, time.perf_counter() - started)
