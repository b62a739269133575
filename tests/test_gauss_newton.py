"""The Gauss-Newton trace (issue 13): Tr(G_l) from per-sample gradients of log p_c, exact over the most
probable classes and one drawn class for the rest; equal to Tr(H_l) of a ReLU network."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mpq
from mpq.errors import MpqError
from mpq.sensitivity.metrics import gauss_newton_traces
from mpq.sensitivity.settings import ProbeSettings

NAMES = ["0", "2", "4"]


@pytest.fixture
def relu_net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5)).eval()
    x = torch.randn(40, 6)
    y = net(x).argmax(1)
    return net, x, y


def exact_block_traces(net, x, y):
    """Tr of each weight's block of the Hessian of the mean cross-entropy, and per output row."""
    layers, rows = [], []
    for name in NAMES:
        layer = net.get_submodule(name)
        w0 = layer.weight.detach().clone()

        def loss(w, layer=layer):
            return F.cross_entropy(torch.func.functional_call(net, {f"{name}.weight": w}, (x,)), y)

        h = torch.autograd.functional.hessian(loss, w0).reshape(w0.numel(), w0.numel()).diagonal().reshape(w0.shape)
        layers.append(float(h.sum()))
        rows.append(h.sum(dim=1).numpy())
    return np.array(layers), rows


def test_with_every_class_exact_it_is_the_hessian_trace_of_a_relu_network(relu_net):
    net, x, y = relu_net
    exact, rows = exact_block_traces(net, x, y)
    found = gauss_newton_traces(net, NAMES, x, y, ProbeSettings(batch_size=16), progress=False, exact_classes=5)
    assert np.allclose(found.trace, exact, rtol=1e-4)
    for got, want in zip(found.channel_trace, rows):
        assert np.allclose(got, want, rtol=1e-4, atol=1e-9)


SEEDS = 30


def test_drawing_the_tail_classes_is_unbiased_and_its_standard_error_is_the_draws_spread(relu_net):
    """Over 30 seeds (2 exact classes + 2 drawn of the other 3): the mean trace is the exact block's within
    3 standard errors of that mean, per layer and per channel, and a layer's reported standard error is on
    the safe side of the estimate's spread from seed to seed, but not far (0.8-3x: the systematic draws
    spread less than the independent ones the standard error assumes)."""
    net, x, y = relu_net
    exact, rows = exact_block_traces(net, x, y)
    runs = [
        gauss_newton_traces(net, NAMES, x, y, ProbeSettings(batch_size=16, seed=s), progress=False)
        for s in range(SEEDS)
    ]
    for got, want in (
        (np.array([r.trace for r in runs]), exact),
        *((np.array([r.channel_trace[i] for r in runs]), rows[i]) for i in range(len(NAMES))),
    ):
        assert np.all(np.abs(got.mean(axis=0) - want) <= 3 * got.std(axis=0, ddof=1) / np.sqrt(SEEDS) + 1e-12)
    spread, se = np.array([r.trace for r in runs]).std(axis=0, ddof=1), np.array([r.stderr for r in runs]).mean(axis=0)
    assert np.all((se > 0.8 * spread) & (se < 3 * spread)), (se, spread)
    again = gauss_newton_traces(net, NAMES, x, y, ProbeSettings(batch_size=16, seed=1), progress=False)
    assert np.array_equal(runs[1].trace, again.trace)  # seeded


def test_with_every_class_exact_there_is_no_draw_error(relu_net):
    net, x, y = relu_net
    found = gauss_newton_traces(net, NAMES, x, y, ProbeSettings(batch_size=16), progress=False, exact_classes=5)
    assert np.all(found.stderr == 0) and all(np.all(s == 0) for s in found.channel_stderr)


def test_the_metric_in_the_api_and_its_losses(relu_net):
    net, x, y = relu_net
    sens = mpq.analyze(
        net, (x, y), metric="gauss_newton", probes=ProbeSettings(batch_size=16), cache_dir=False, progress=False
    )
    assert sens.metric == "gauss_newton" and all(s.hessian_trace > 0 for s in sens.layers.values())
    assert mpq.solve(sens, "300B").predicted["size_bytes"] <= 300
    with pytest.raises(MpqError, match="curvature of a softmax loss: use --loss labels, fp32 or kl"):
        mpq.analyze(net, (x, y), metric="gauss_newton", loss="mse", cache_dir=False, progress=False)


def test_the_default_metric_is_the_first_of_kl_anchored_mse_anchored_gauss_newton_hessian_that_applies(relu_net):
    net, x, y = relu_net
    quick = {"cache_dir": False, "progress": False, "probes": ProbeSettings(max_probes=4, min_probes=2)}
    assert mpq.analyze(net, (x, y), **quick).metric == "kl_anchored"
    assert (
        mpq.analyze(net, (x, y), activations=True, **quick).metric == "gauss_newton"
    )  # kl_anchored has no inputs' sensitivity
    assert mpq.analyze(net, (x, y), loss="labels", **quick).metric == "gauss_newton"  # a named loss other than kl
    assert mpq.analyze(net, (x, y), loss="mse", **quick).metric == "mse_anchored"  # not a softmax's loss
    torch.manual_seed(0)
    per_position = nn.Sequential(
        nn.Conv1d(3, 4, 3), nn.ReLU(), nn.Conv1d(4, 5, 1)
    ).eval()  # [batch, classes, positions]
    assert mpq.analyze(per_position, torch.randn(12, 3, 8), loss="fp32", **quick).metric == "hessian"
    with pytest.raises(MpqError, match=r"outputs of \[batch, classes\], not 3-dimensional"):
        mpq.analyze(per_position, torch.randn(12, 3, 8), metric="gauss_newton", **quick)


def test_a_cap_that_stops_the_draws_above_the_tolerance_is_said_in_one_line(relu_net):
    net, x, y = relu_net
    sens = mpq.analyze(
        net,
        (x, y),
        metric="gauss_newton",
        probes=ProbeSettings(tol=0.001, max_probes=4),
        cache_dir=False,
        progress=False,
    )
    short = sens.stopped_short()
    assert short is not None and short.cap == "max_probes"
    assert short.line().endswith("at the 4-probe cap: raise --max-probes or --max-seconds")
    easy = mpq.analyze(
        net, (x, y), metric="gauss_newton", probes=ProbeSettings(tol=0.5), cache_dir=False, progress=False
    )
    assert easy.stopped_short() is None and all(
        s.hessian_trace_stderr < 0.5 * s.hessian_trace for s in easy.layers.values()
    )
