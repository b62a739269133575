"""Hutchinson traces against exact Hessian blocks from torch.autograd.functional.hessian."""

import numpy as np
import torch
from torch.func import functional_call
from torch.nn import functional as F

from mpq.inputs.graph import prepare_model
from mpq.sensitivity.hessian import hutchinson_traces
from mpq.sensitivity.settings import ProbeSettings


def exact_block(model, name, x, y) -> torch.Tensor:
    """The Hessian of the mean cross-entropy w.r.t. one layer's weight, flattened to [n, n]."""
    weight = model.get_submodule(name).weight.detach()

    def loss(w):
        return F.cross_entropy(functional_call(model, {f"{name}.weight": w}, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, weight)
    return hessian.reshape(weight.numel(), weight.numel())


def test_layer_and_channel_traces_match_exact_hessian(tiny_model, tiny_data):
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    names = [layer.name for layer in prepared.graph.layers]
    assert names == ["conv1", "conv2", "fc"]
    settings = ProbeSettings(tol=0.01, min_probes=8, max_probes=400, batch_size=len(x), seed=3)
    traces = hutchinson_traces(prepared.folded, names, x, y, settings, progress=False)
    for i, name in enumerate(names):
        block = exact_block(prepared.folded, name, x, y)
        exact = float(torch.trace(block))
        assert abs(traces.trace[i] - exact) <= 3 * traces.stderr[i], (name, traces.trace[i], exact, traces.stderr[i])
        out_channels = prepared.folded.get_submodule(name).weight.shape[0]
        diagonal = torch.diagonal(block).reshape(out_channels, -1).sum(dim=1).numpy()
        deviation = np.abs(traces.channel_trace[i] - diagonal)
        assert np.all(deviation <= 3 * traces.channel_stderr[i] + 1e-9), (name, traces.channel_trace[i], diagonal)


def test_stops_at_tolerance_with_standard_errors_under_it(tiny_model, tiny_data):
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    settings = ProbeSettings(tol=0.25, min_probes=4, max_probes=500, batch_size=len(x), seed=0)
    traces = hutchinson_traces(prepared.folded, ["conv2", "fc"], x, y, settings, progress=False)
    assert traces.stop_reason == "tolerance"
    assert np.all(traces.stderr <= 0.25 * traces.trace)
    assert 4 <= traces.probes < 500


def test_user_model_keeps_its_gradient_flags(tiny_model, tiny_data):
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    flags = [p.requires_grad for p in prepared.folded.parameters()]
    hutchinson_traces(prepared.folded, ["fc"], x, y, ProbeSettings(max_probes=3, min_probes=2), progress=False)
    assert [p.requires_grad for p in prepared.folded.parameters()] == flags
