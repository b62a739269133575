"""The plans each sensitivity metric picks, measured: default model, size budgets 4 / 3.5 / 3 / 2.7 MB.

Run:  python reports/bench_metric_plans.py [--metrics hessian,kl_quadratic] [--cache-dir DIR]
Writes reports/metric_plans.md. hessian with 16 probes per layer (as reports/bench_proxy.py), the
others at their defaults; trace margins 0 and 2; each plan measured by mpq.verify (200 views, default quantizer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mpq
from mpq.cache import Cache, default_cache_dir
from mpq.inputs.graph import prepare_model
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.quant.reference import fp32_reference
from mpq.verify.measure import measure_plan, plan_calibration

HERE = Path(__file__).parent
BUDGETS = ("4MB", "3.5MB", "3MB", "2.7MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics", default="hessian,kl_quadratic")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = parser.parse_args()
    cache = Cache(Path(args.cache_dir))
    model, data = build_model(), load_views()
    prepared = prepare_model(model, data.x[:2])
    reference = fp32_reference(prepared, data, 25, cache)
    lines = [
        "# The plans each metric picks",
        "",
        f"`python reports/bench_metric_plans.py --metrics {args.metrics}`: EfficientNet-Lite0, 200 views, "
        "default quantizer, 8-bit activations; hessian with 16 probes per layer.",
        "",
        "| metric | budget | trace margin | size (B) | KL(FP32‖q) | agreement |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for metric in args.metrics.split(","):
        probing = {"max_probes": 16, "max_seconds": 5000} if metric == "hessian" else {}
        sens = mpq.analyze(prepared, data, metric=metric, cache_dir=args.cache_dir, progress=False, **probing)
        for budget in BUDGETS:
            for margin in (0.0, 2.0):
                plan = mpq.solve(sens, budget, trace_margin=margin)
                calibration = plan_calibration(prepared, plan, data, reference, 25, cache)
                m = measure_plan(
                    prepared, plan, data, reference, f"{metric} {budget}", 25, cache, calibration=calibration
                )
                lines.append(
                    f"| {metric} | {budget} | {margin:g} | {m.size_bytes:,} | {m.kl_to_fp32:.4f} | {100 * m.fp32_agreement:.1f}% |"
                )
                print(lines[-1], flush=True)
    (HERE / "metric_plans.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
