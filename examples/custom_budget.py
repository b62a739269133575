"""Size and BOPs budgets together, from Python: `mpq.Budget` objects and strings, all must hold.

A small convnet is trained for a few seconds on synthetic 12x12 images (a bar's orientation is the
class), then mpq finds the widths of every layer that fit both a byte budget and a bit-operation
budget, and compares the plan with uniform widths.

Run:  python examples/custom_budget.py
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import mpq
from mpq.cost.budget import format_bytes


def bars(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 12x12 images of a bar: horizontal, vertical, diagonal or anti-diagonal (labels 0-3)."""
    labels = torch.randint(0, 4, (count,), generator=generator)
    images = 0.9 * torch.randn(count, 1, 12, 12, generator=generator)
    offsets = torch.randint(2, 10, (count,), generator=generator)
    idx = torch.arange(12)
    for i, (label, at) in enumerate(zip(labels.tolist(), offsets.tolist())):
        if label == 0:
            images[i, 0, at, :] += 1.0
        elif label == 1:
            images[i, 0, :, at] += 1.0
        elif label == 2:
            images[i, 0, idx, idx] += 1.0
        else:
            images[i, 0, idx, 11 - idx] += 1.0
    return images, labels


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 3 * 3, 64),
        nn.ReLU(),
        nn.Linear(64, 4),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = train(small_cnn(), *bars(2000, generator))
    data = mpq.Dataset(*bars(400, generator), description="400 bar images")

    # Budgets: a Budget object for bytes and a string for bit operations; both must hold.
    budgets = [mpq.Budget(kind="size_bytes", limit=20_000, text="20kB"), "0.012GBOPs"]
    sensitivity = mpq.analyze(model, data, probes=mpq.ProbeSettings(max_probes=16), progress=False, cache_dir=False)
    plan = mpq.solve(sensitivity, budget=budgets, space=mpq.SearchSpace(bits=(2, 3, 4, 5, 6, 8), act_bits=8))
    report = mpq.verify(model, plan, data, baseline_bits=(2, 3, 4, 5, 6, 8), cache_dir=False)

    print(f"budgets: {', '.join(b.text for b in plan.budgets)}")
    for name, layer in plan.layers.items():
        print(
            f"  {name:>4}: W{layer.weight_bits}A{layer.act_bits}  "
            f"(Omega = {sensitivity.layers[name].omega(layer.weight_bits):.3g})"
        )
    print(
        f"plan: {format_bytes(report.plan.size_bytes)}, {report.plan.bops / 1e9:.3f} GBOPs, "
        f"top-1 {report.plan.top1:.1%} (FP32 {report.fp32.top1:.1%}), agreement with FP32 {report.plan.fp32_agreement:.1%}"
    )
    for baseline in report.baselines:
        print(
            f"  {baseline.name}: {format_bytes(baseline.size_bytes)}, {baseline.bops / 1e9:.3f} GBOPs, "
            f"top-1 {baseline.top1:.1%}, agreement {baseline.fp32_agreement:.1%}, fits both budgets: {baseline.fits_budget}"
        )
    try:
        mpq.solve(sensitivity, budget=["20kB", "0.004GBOPs"], space=mpq.SearchSpace(bits=(2, 4, 8)))
    except mpq.BudgetInfeasible as error:
        print(f"a budget that cannot be met is answered: {error}")


if __name__ == "__main__":
    main()
