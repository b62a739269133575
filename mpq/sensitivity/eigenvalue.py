"""The top-eigenvalue metric (HAWQ-V1): T_l = n_l · λ_max(H_l) by power iteration on the layer's own block, for
the Hessian of the mean loss over one batch, until two iterates differ by under EIGEN_TOL relatively (see
mpq.sensitivity.metrics for the curvature metrics together)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from mpq.device import drawn_on
from mpq.inputs.graph import module_calls_visible
from mpq.progress import bar
from mpq.sensitivity.hessian import HessianTraces
from mpq.sensitivity.hvp import NoSecondDerivative
from mpq.sensitivity.metrics import LossFn
from mpq.sensitivity.settings import ProbeSettings

EIGEN_TOL = 1e-3  # power iteration stops when |λ_k − λ_{k−1}| <= EIGEN_TOL · |λ_k|


def power_iteration(
    apply: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, max_iter: int, tol: float = EIGEN_TOL
) -> tuple[float, float, int]:
    """(λ, |λ_k − λ_{k−1}|, iterations): the dominant eigenvalue of the symmetric map `apply`, by
    Rayleigh quotients λ_k = v_kᵀ A v_k with v_{k+1} = A v_k / ||A v_k||."""
    v = v / v.norm()
    eigenvalue, change = 0.0, float("inf")
    for k in range(1, max_iter + 1):
        av = apply(v)
        new = float(torch.dot(v.flatten().double(), av.flatten().double()))
        change = abs(new - eigenvalue) if k > 1 else float("inf")
        eigenvalue = new
        norm = av.norm()
        if norm == 0:
            return 0.0, 0.0, k
        v = av / norm
        if change <= tol * abs(eigenvalue):
            return eigenvalue, change, k
    return eigenvalue, change, max_iter


def top_block_eigenvalue(
    model: nn.Module,
    weight: torch.Tensor,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: LossFn,
    generator: torch.Generator,
    max_iter: int,
) -> tuple[float, float, int]:
    """(λ_max, last change, iterations) of the Hessian block of loss_fn(model(x), target) for `weight`
    (which alone requires grad)."""
    gradient = torch.autograd.grad(loss_fn(model(x), target), weight, create_graph=True)[0]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        try:
            return torch.autograd.grad(gradient, weight, grad_outputs=v, retain_graph=True)[0].detach()
        except RuntimeError as exc:
            missing = NoSecondDerivative.of(exc)
            if missing is None:
                raise
            raise missing from None

    start = drawn_on(torch.randn(weight.shape, generator=generator), weight.device)
    eigenvalue, change, iterations = power_iteration(hvp, start, max_iter)
    if eigenvalue < 0:  # the dominant one is negative: the top one is λ + the dominant one of H − λI
        shift = eigenvalue
        top, change, more = power_iteration(lambda v: hvp(v) - shift * v, start, max_iter)
        eigenvalue, iterations = top + shift, iterations + more
    return eigenvalue, change, iterations


def top_eigenvalues(
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    settings: ProbeSettings = ProbeSettings(),
    progress: bool | None = None,
    *,
    loss_fn: LossFn,
) -> tuple[HessianTraces, dict[str, list]]:
    """Per layer n_l · λ_max(H_l) as the trace Ω uses, and {"top_eigenvalue", "eigenvalue_change", "iterations"}."""
    weights = [model.get_submodule(n).weight for n in layer_names]
    requires = {p: p.requires_grad for p in model.parameters()}
    generator = torch.Generator().manual_seed(settings.seed)
    batch = torch.randperm(len(x), generator=generator)[: settings.batch_size]
    found: list[tuple[float, float, int]] = []
    started = time.perf_counter()
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with module_calls_visible(), bar(len(weights), "eigenvalue", progress, unit="layer") as shown:
            for w in weights:
                w.requires_grad_(True)
                found.append(
                    top_block_eigenvalue(model, w, x[batch], targets[batch], loss_fn, generator, settings.max_probes)
                )
                w.requires_grad_(False)
                shown.update(1)
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
    eigenvalues = np.array([f[0] for f in found])
    changes = np.array([f[1] for f in found])
    sizes = np.array([w.numel() for w in weights], dtype=np.float64)
    per_channel = [np.full(w.shape[0], float(w[0].numel())) for w in weights]
    converged = all(f[1] <= EIGEN_TOL * abs(f[0]) for f in found)
    traces = HessianTraces(
        layer_names=list(layer_names),
        trace=sizes * eigenvalues,
        stderr=sizes * changes,
        probes=int(max((f[2] for f in found), default=0)),
        channel_trace=[c * lam for c, lam in zip(per_channel, eigenvalues)],
        channel_stderr=[c * d for c, d in zip(per_channel, changes)],
        seconds=time.perf_counter() - started,
        stop_reason="tolerance" if converged else "max_probes",
    )
    return traces, {
        "top_eigenvalue": eigenvalues.tolist(),
        "eigenvalue_change": changes.tolist(),
        "iterations": [f[2] for f in found],
    }
