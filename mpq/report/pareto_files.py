"""What `mpq pareto` writes: pareto.json (mpq.pareto/1), pareto.csv (one row per point and per uniform
width) and pareto.png (predicted Omega, measured agreement and KL against size or BOPs), and its table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mpq.cost.budget import BOPS_PREFIXES, PER_WEIGHT_PREFIXES, format_bytes, format_cost
from mpq.files import write_json_atomic, write_text_atomic
from mpq.report.plots import save_figure
from mpq.report.text import pct
from mpq.verify.pareto import ParetoResult
from mpq.verify.report import Measurement

CSV_COLUMNS = (
    "config",
    "budget",
    "budget_limit",
    "feasible",
    "size_bytes",
    "bops",
    "omega",
    "verified",
    "measured_size_bytes",
    "measured_bops",
    "fp32_agreement",
    "kl_to_fp32",
    "top1",
    "cosine_to_fp32",
    "proven_optimal",
    "gap",
    "solve_seconds",
    "bits_per_weight",
    "measured_bits_per_weight",
)
AXIS_UNITS = {
    "size_bytes": (("MB", 1e6), ("kB", 1e3), ("B", 1.0)),
    "bops": BOPS_PREFIXES,
    "bits_per_weight": PER_WEIGHT_PREFIXES,
}
AXIS_NAMES = {"size_bytes": "size", "bops": "bit operations", "bits_per_weight": "bits per weight"}


def _measured_cells(m: Measurement | None) -> dict:
    if m is None:
        return {"verified": False}
    return {
        "verified": True,
        "measured_size_bytes": m.size_bytes,
        "measured_bops": m.bops,
        "fp32_agreement": m.fp32_agreement,
        "kl_to_fp32": m.kl_to_fp32,
        "top1": m.top1,
        "cosine_to_fp32": m.cosine_to_fp32,
        "measured_bits_per_weight": m.bits_per_weight,
    }


def csv_rows(result: ParetoResult) -> list[dict]:
    """One row per sweep point ("mpq"), then one per uniform width ("uniform W4A8" ...)."""
    rows = []
    for p in result.points:
        row = {
            "config": "mpq",
            "budget": p.budget.text,
            "budget_limit": p.budget.limit,
            "feasible": p.feasible,
            "solve_seconds": round(p.solve_seconds, 4),
        }
        if p.plan is not None:
            row |= {k: p.plan.predicted.get(k) for k in ("size_bytes", "bops", "omega", "bits_per_weight")}
            row |= {"proven_optimal": p.plan.solver.get("proven_optimal"), "gap": p.plan.solver.get("gap")}
        rows.append(row | _measured_cells(p.measured))
    for u in result.uniform:
        rows.append({"config": u.name, "feasible": True, **u.predicted} | _measured_cells(u.measured))
    return rows


def pareto_csv(result: ParetoResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(result):
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def pareto_table(result: ParetoResult) -> str:
    """Markdown table: per point its budget, predicted size, BOPs and Omega, and what was measured."""
    lines = [
        "| config | budget | size | BOPs | Ω | agreement with FP32 | KL(FP32‖q) | top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in csv_rows(result):
        if not row["feasible"]:
            lines.append(f"| mpq | {row['budget']} | infeasible | | | | | |")
            continue
        kl = f"{row['kl_to_fp32']:.4f}" if row["verified"] else "-"
        lines.append(
            f"| {row['config']} | {row.get('budget', '')} | {format_bytes(row['size_bytes'])} | "
            f"{format_cost('bops', row['bops'])} | {row['omega']:.4g} | "
            f"{pct(row.get('fp32_agreement'))} | {kl} | {pct(row.get('top1'))} |"
        )
    return "\n".join(lines)


def _axis(result: ParetoResult) -> tuple[str, float]:
    """The x-axis label and scale: the largest unit that keeps the largest point >= 1."""
    largest = max(
        [p.plan.predicted[result.kind] for p in result.feasible_points]
        + [u.predicted[result.kind] for u in result.uniform]
    )
    unit, scale = next(((u, f) for u, f in AXIS_UNITS[result.kind] if largest >= f), AXIS_UNITS[result.kind][-1])
    return AXIS_NAMES[result.kind] + f" ({unit})", scale


def plot_pareto(result: ParetoResult, path: Path) -> None:
    """Predicted Omega (log), measured agreement with FP32 and KL (log) against size or BOPs; uniform widths as
    squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, scale = _axis(result)
    measured = any(p.measured is not None for p in result.feasible_points)
    panels = 3 if measured or any(u.measured is not None for u in result.uniform) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(7, 3 + 2.4 * panels), sharex=True, squeeze=False)
    axes = axes[:, 0]
    _omega_panel(axes[0], result, scale)
    if panels == 3:
        _measured_panels(axes[1:], result, scale)
    axes[-1].set_xlabel(label)
    save_figure(fig, path)


def _omega_panel(ax, result: ParetoResult, scale: float) -> None:
    """The predicted total Omega of every feasible point, and of the uniform widths (annotated), log scale."""
    feasible = result.feasible_points
    verified = [p for p in feasible if p.measured is not None]
    ax.plot(
        [p.plan.predicted[result.kind] / scale for p in feasible],
        [p.plan.predicted["omega"] for p in feasible],
        "o-",
        ms=3,
        color="tab:blue",
        label="mpq (predicted)",
    )
    ax.plot(
        [u.predicted[result.kind] / scale for u in result.uniform],
        [u.predicted["omega"] for u in result.uniform],
        "s",
        color="tab:red",
        label="uniform",
    )
    for u in result.uniform:
        ax.annotate(
            f"W{u.weight_bits}",
            (u.predicted[result.kind] / scale, u.predicted["omega"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_yscale("log")
    ax.set_ylabel("predicted total Ω")
    ax.set_title(
        f"mpq Pareto front ({len(feasible)} of {len(result.points)} budgets feasible, {len(verified)} measured)"
    )
    ax.legend(fontsize=8)


def _measured_panels(axes, result: ParetoResult, scale: float) -> None:
    """Measured agreement with FP32 (%) and KL (log scale) of the measured points and uniform widths."""
    verified = [p for p in result.feasible_points if p.measured is not None]
    measured_uniform = [u for u in result.uniform if u.measured is not None]
    for ax, metric, ylabel in (
        (axes[0], "fp32_agreement", "agreement with FP32 (%)"),
        (axes[1], "kl_to_fp32", "KL(FP32‖q)"),
    ):
        factor = 100 if metric == "fp32_agreement" else 1
        mx = [getattr(p.measured, result.kind) / scale for p in verified]
        ax.plot(
            mx,
            [factor * getattr(p.measured, metric) for p in verified],
            "o-",
            color="tab:blue",
            label="mpq (measured)",
        )
        ux = [getattr(u.measured, result.kind) / scale for u in measured_uniform]
        ax.plot(
            ux,
            [factor * getattr(u.measured, metric) for u in measured_uniform],
            "s",
            color="tab:red",
            label="uniform (measured)",
        )
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")


def write_pareto(out_dir: Path, result: ParetoResult) -> list[Path]:
    """pareto.json, pareto.csv and pareto.png, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "pareto.json", out_dir / "pareto.csv", out_dir / "pareto.png"]
    write_json_atomic(paths[0], result.to_json())
    write_text_atomic(paths[1], pareto_csv(result))
    plot_pareto(result, paths[2])
    return paths
