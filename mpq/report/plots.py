"""The plots of a search: per-layer widths and sensitivities, every layer's sensitivity, and the proxy
check's predicted Ω against measured KL; each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mpq.files import atomic_path
from mpq.plan import Plan
from mpq.report.tables import input_value, layer_value
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.registry import metric_of

if TYPE_CHECKING:
    from mpq.verify.report import ProxyCheck


def save_figure(fig, path: Path) -> None:
    """Written atomically: a unique temporary file with the same suffix in the same folder (two runs with
    one --out never share it), then a rename; the file gets the umask's mode (mpq.files.atomic_path)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_proxy(check: "ProxyCheck", path: Path) -> None:
    """Predicted total Omega against measured KL, log-log: the random plans and the searched plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    randoms, plan = check.points[1:], check.points[0]
    ax.scatter(
        [p.omega for p in randoms],
        [p.kl_to_fp32 for p in randoms],
        color="tab:blue",
        label="random plans, same size budget",
    )
    ax.scatter([plan.omega], [plan.kl_to_fp32], color="tab:red", marker="*", s=180, label="mpq plan")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted total Ω")
    ax.set_ylabel("measured KL(FP32 ‖ q)")
    ax.set_title(f"Spearman ρ = {check.spearman:.2f}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_layers(sensitivity: Sensitivity, plan: Plan, path: Path) -> None:
    """Bars: per-layer weight width, and per-layer sensitivity with error bars (log scale; see plot_sensitivity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sensitivity.layers)
    x = range(len(names))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.22), 7), sharex=True)
    top.bar(x, [plan.layers[n].mean_weight_bits() for n in names], color="tab:blue")
    top.set_ylabel(
        "weight bits" + (" (mean over channels)" if any(lp.channel_bits for lp in plan.layers.values()) else "")
    )
    top.set_title(f"mpq plan: widths and sensitivities ({sensitivity.metric}) per layer")
    warned = {n for n, s in sensitivity.layers.items() if s.warning(sensitivity.settings.tol)}
    _bars(
        bottom, sensitivity, [layer_value(sensitivity, n) for n in names], warned, metric_of(sensitivity.metric).label
    )
    bottom.set_xticks(list(x))
    bottom.set_xticklabels(names, rotation=90, fontsize=6)
    save_figure(fig, path)


def _bars(
    ax, sensitivity: Sensitivity, values: list[tuple[float, float | None] | None], warned: set[str], ylabel: str
) -> None:
    """Log-scale bars with error bars; a value that is not positive is drawn at the floor, hatched."""
    names = list(sensitivity.layers)
    shown = [v for v in values if v is not None and v[0] > 0]
    floor = min((v[0] for v in shown), default=1.0) / 10
    heights = [max(v[0], floor) if v is not None else floor for v in values]
    errors = [0.0 if v is None or v[1] is None else min(v[1], 1e300) for v in values]
    colors = ["tab:red" if n in warned else "tab:orange" for n in names]
    bars = ax.bar(range(len(names)), heights, yerr=errors, color=colors, capsize=1.5, error_kw={"elinewidth": 0.8})
    for bar, v in zip(bars, values):
        if v is None or v[0] <= 0:
            bar.set_hatch("//")
            bar.set_alpha(0.4)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2)
    ax.set_ylabel(ylabel)


def plot_sensitivity(sensitivity: Sensitivity, path: Path) -> None:
    """Bar chart of every layer's sensitivity (trace ± stderr, or the metric's number) on a log scale,
    and of its input's with activation sensitivity; red: the table warns about the estimate; hatched:
    not positive (drawn at the floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sensitivity.layers)
    label = metric_of(sensitivity.metric).label
    panels = 2 if sensitivity.has_activations else 1
    fig, axes = plt.subplots(
        panels, 1, figsize=(max(8, len(names) * 0.22), 3.2 * panels + 1.5), sharex=True, squeeze=False
    )
    tol = sensitivity.settings.tol
    warned = {n for n, s in sensitivity.layers.items() if s.warning(tol)}
    _bars(axes[0][0], sensitivity, [layer_value(sensitivity, n) for n in names], warned, f"weights: {label}")
    axes[0][0].set_title(
        f"mpq sensitivity ({sensitivity.metric}, loss {sensitivity.loss}); red: estimate not trustworthy"
    )
    if panels == 2:
        warned = {
            n
            for n, s in sensitivity.layers.items()
            if s.activation and s.activation.warning(metric_of(sensitivity.metric), tol)
        }
        _bars(axes[1][0], sensitivity, [input_value(sensitivity, n) for n in names], warned, f"inputs: {label}")
    bottom = axes[-1][0]
    bottom.set_xticks(range(len(names)))
    bottom.set_xticklabels(names, rotation=90, fontsize=6)
    save_figure(fig, path)
