"""Which estimator for Tr(H_ll) where the network is curved after layer l: Tr(G_ll) + Hutchinson on the residual
R_ll = H_ll − G_ll (what `--metric gauss_newton` does), or per-layer Hutchinson on H_ll (`--metric hessian`)?

Both spend one Hessian-vector product of one layer per probe (of the loss, or of the contracted output
⟨ḡ, f⟩), so their variance per second is their variance per probe, up to the products' costs, which
`--time` measures. The variances here are exact, from the blocks of tests/residual_models.py: for a batch
B and Rademacher v, Var_v(vᵀAv) = 2(‖A_B‖_F² − Σ_i (A_B)_ii²); over the probes, which cycle through the
batches of the seeded order, the per-probe variance is mean_B Var_v + Var_B Tr(A_B).

    python reports/bench_residual.py                  # variances (exact; no timing)
    python reports/bench_residual.py --time           # also seconds per probe of each product (a quiet machine)
    python reports/bench_residual.py --default-model  # also the residual test on EfficientNet-Lite0 (16 views)

Columns: Tr(H), Tr(G), Tr(R) exact; sd of one probe of H and of R relative to Tr(H); their variance ratio;
the probes each needs for a probing error of 5% of Tr(H) (Tr(G) is exact on the data up to its one drawn
class); and the standard error --metric gauss_newton reports for Tr(G), the spread of the per-sample
trace over the samples, which it adds to the residual's (the error of the data, not of the estimator).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpq.sensitivity.hessian import ProbeProblem, _rademacher, probe_batches, probe_generator, weights_requiring_grad  # noqa: E402
from mpq.sensitivity.metrics import gauss_newton_traces  # noqa: E402
from mpq.sensitivity.residual import contracted_output, output_gradients, residual_test  # noqa: E402
from mpq.sensitivity.settings import ProbeSettings  # noqa: E402
from tests.residual_models import CURVED_LAYERS, curved_block, exact_blocks  # noqa: E402
from tests.user_models import torch_encoder  # noqa: E402

TOL = 0.05


def encoder(samples: int = 96):
    """nn.TransformerEncoderLayer (post-norm: softmax attention, ReLU MLP, LayerNorm) with a linear head."""
    model = torch_encoder()
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (samples, 8), generator=generator)
    with torch.no_grad():
        y = (model(x) + torch.randn(samples, 3, generator=generator)).argmax(dim=1)
    return model, x, y


NETWORKS = {
    "CurvedBlock (GELU, LayerNorm, softmax attention)": (curved_block, CURVED_LAYERS),
    "TorchEncoder (nn.TransformerEncoderLayer)": (
        encoder,
        ["encoder.self_attn.out_proj", "encoder.linear1", "encoder.linear2", "head"],
    ),
}


def rademacher_variance(block: torch.Tensor) -> float:
    return float(2 * (block.double().pow(2).sum() - block.double().diagonal().pow(2).sum()))


def per_probe_variance(blocks: list[torch.Tensor]) -> float:
    """mean over batches of Var_v(vᵀAv) + the variance over batches of Tr(A_B)."""
    traces = np.array([float(b.double().trace()) for b in blocks])
    return float(np.mean([rademacher_variance(b) for b in blocks]) + traces.var())


def seconds_per_probe(model, name: str, x, y, residual: bool, settings: ProbeSettings, repeats: int = 5) -> float:
    """Seconds of one product of layer `name`'s block: of the loss (H) or of the contracted output (R)."""
    weight = model.get_submodule(name).weight
    batch = probe_batches(len(x), settings)[0]
    target = output_gradients(model, x[batch], y[batch], F.cross_entropy, len(batch)) if residual else y[batch]
    loss = contracted_output if residual else F.cross_entropy
    problem = ProbeProblem(model, [f"{name}.weight"], [weight], x[batch], target, loss, [batch], settings)
    with weights_requiring_grad(model, [weight]):
        v = _rademacher(weight.shape, probe_generator(0, 0))
        problem.layer_hvp(x[batch], target, 0, v)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            problem.layer_hvp(x[batch], target, 0, v)
    return (time.perf_counter() - started) / repeats


def probes_to_tol(variance: float, trace: float) -> str:
    return f"{variance / (TOL * trace) ** 2:.0f}"


def report(title: str, make, names: list[str], timed: bool) -> None:
    model, x, y = make()
    settings = ProbeSettings()
    batches = probe_batches(len(x), settings)
    gn = gauss_newton_traces(model, names, x, y, settings, progress=False)
    print(f"\n{title}: {len(x)} samples, batches of {settings.batch_size}\n")
    head = "| layer | Tr(H) | Tr(G) | Tr(R) | sd(vᵀHv)/Tr(H) | sd(vᵀRv)/Tr(H) | var H / var R | probes to 5%: H | R | se(Tr G) spread/Tr(H) |"
    print(head + (" s/probe H | s/probe R |" if timed else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if timed else ""))
    for i, name in enumerate(names):
        whole = exact_blocks(model, name, x, y)
        parts = [exact_blocks(model, name, x[b], y[b]) for b in batches]
        var_h = per_probe_variance([p.hessian for p in parts])
        var_r = per_probe_variance([p.residual for p in parts])
        h, g = float(whole.hessian.trace()), float(whole.gauss_newton.trace())
        ratio = f"{var_h / var_r:.3g}" if var_r > 1e-12 * var_h else "∞ (R = 0)"
        row = (
            f"| {name} | {h:.4g} | {g:.4g} | {h - g:.3g} | {np.sqrt(var_h) / h:.2f} | {np.sqrt(var_r) / h:.2f} | {ratio} | "
            f"{probes_to_tol(var_h, h)} | {probes_to_tol(var_r, h)} | {float(gn.stderr[i]) / h:.3f} |"
        )
        if timed:
            row += f" {seconds_per_probe(model, name, x, y, False, settings):.4f} | {seconds_per_probe(model, name, x, y, True, settings):.4f} |"
        print(row)


def default_model_test(views: int = 16) -> None:
    """The residual test on the built-in model, BatchNorm folded, Tr(G) over the first `views` views."""
    from mpq.inputs.graph import prepare_model
    from mpq.models.efficientnet_lite0 import build_model, load_views

    data = load_views()
    prepared = prepare_model(build_model(), data.x[:1])
    names = [layer.name for layer in prepared.graph.layers]
    x, y = data.x[:views], data.y[:views]
    settings = ProbeSettings()
    gn = gauss_newton_traces(prepared.folded, names, x, y, settings, progress=False)
    test = residual_test(prepared.folded, names, x, y, F.cross_entropy, gn, settings)
    print(
        f"\nEfficientNet-Lite0 (BatchNorm folded), Tr(G) over {views} views, the test on views {test.samples}: "
        f"{int(test.needs.sum())} of {len(names)} layers need the residual; largest √n‖Rv‖/Tr(G) {test.ratio.max():.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--time", action="store_true", help="also time one product of each kind (run on a quiet machine)"
    )
    parser.add_argument(
        "--default-model", action="store_true", help="also run the residual test on the built-in EfficientNet-Lite0"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    for title, (make, names) in NETWORKS.items():
        report(title, make, names, args.time)
    if args.default_model:
        torch.set_num_threads(2)
        default_model_test()


if __name__ == "__main__":
    main()
