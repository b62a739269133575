"""The sensitivity metrics behind `--metric`, one class per idea, and the registry that names them.

Each metric is a strategy: `estimate(context)` gives every layer's estimate (mpq.sensitivity.estimates) from one
AnalysisContext (mpq.sensitivity.context), and the metric says what Omega_l(b) is, what a table shows for it and
when an estimate is not to be trusted. Three families, one base class each:

    CurvatureMetric  a trace-like T_l, Omega_l(b) = T_l / n_l * ||Q_b(W_l) - W_l||^2 (per channel the same
                     with the channel's weights): HessianTrace, FisherTrace, GaussNewtonTrace, TopEigenvalue
    MeasuredMetric   Omega_l(b) measured with only layer l quantized at b bits: OutputMSE, OutputKL
                     (whole layers: no per-channel Omega)
    QuadraticMetric  Omega_l(b) = 1/2 E[delta^T M delta] in the layer's actual quantization error: KLQuadratic,
                     and KLAnchored, scaled per layer to one measured KL

Code outside this module asks a Metric for what it needs (`metric_of(name).label`, `.estimate(...)`, ...) and
never compares metric names or branches on a metric's family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mpq.errors import MpqError

if TYPE_CHECKING:
    from mpq.sensitivity.context import AnalysisContext
    from mpq.sensitivity.estimates import Estimates, LayerEstimate
    from mpq.sensitivity.hessian import HessianTraces

# the estimators (torch) are imported when a metric runs, so that naming the metrics (the `mpq` parser) does not
# import torch

CHART_BITS = 4  # the width whose Omega the measured and quadratic metrics' tables and charts show
# The metric of mpq.analyze/search/pareto and the `mpq` commands when none is named: the first of these that
# applies to the model, loss and search (Metric.suits_default); the one place to change it. The order is that of
# reports/objective.md: kl_anchored's plans come as close to a measured greedy search as kl_quadratic's, at 1/14
# of its time (62 s against 888 s), and its Ω ranks random plans as their measured KL does (kl_quadratic's does not).
# mse_anchored: the same for outputs that are no softmax's logits (embeddings, --loss mse), instead of per-layer
# Hutchinson probing (issue 23).
DEFAULT_METRICS = ("kl_anchored", "mse_anchored", "gauss_newton", "hessian")


class Metric:
    """One sensitivity metric: `estimate` gives every layer's estimate; subclasses set the class attributes."""

    name: ClassVar[str]
    label: ClassVar[str]  # the quantity a table shows, e.g. "Tr(H)"
    per_channel: ClassVar[bool] = True  # has a per-channel Omega (for --granularity channel)
    inputs: ClassVar[bool] = True  # can also give the inputs' sensitivity (activation widths)
    checkpointed: ClassVar[bool] = False  # an unfinished estimate is saved after every probe and resumed
    fixed_loss: ClassVar[str | None] = None  # the loss the metric is defined with, whatever --loss says
    uses_quantizer: ClassVar[bool] = True  # its Omega depends on the quantizer's clipping and bias correction
    estimator: ClassVar[str] = "measured"  # how a layer's number is estimated (a layer's `estimator` may say more)
    cache_tag: ClassVar[str | None] = None  # a version of the estimator, in the cache key, when its numbers changed
    uses_loss: ClassVar[bool] = False  # its estimate is of the loss (checked against the model's outputs first)

    def estimate(self, ctx: AnalysisContext) -> Estimates:
        """Every layer's estimate (in the graph's order)."""
        raise NotImplementedError

    def estimate_inputs(self, ctx: AnalysisContext, key: dict, groups, shapes, ranges) -> list[LayerEstimate]:
        """Every input group's estimate (activation sensitivity), for metrics with `inputs`."""
        raise NotImplementedError

    def cache_fields(self) -> dict:
        """What the shared cache key holds of the metric."""
        return {"metric": self.name} | ({"estimator": self.cache_tag} if self.cache_tag else {})

    def layer_shown(self, s) -> tuple[float, float | None]:
        """The number a table or chart shows for one layer's LayerSensitivity `s`, and its error bar."""
        return self.shown(s.trace.value, s.trace.stderr, s.details, s.omega_table)

    def why_not(self, loss_name: str, output_dims: int) -> str | None:
        """Why the metric is not defined for this loss and these outputs (None: it is; most metrics take any)."""
        return None

    def suits_default(
        self, loss_name: str, loss_named: bool, output_dims: int, embeddings: bool, activations: bool
    ) -> bool:
        """Whether the metric can be the default here: defined for the loss and outputs, and for the inputs when
        they are analyzed too."""
        return self.why_not(loss_name, output_dims) is None and (self.inputs or not activations)

    def check_loss(self, loss_name: str, output_dims: int = 2) -> None:
        """MpqError when the metric is not defined for this loss and these outputs."""
        reason = self.why_not(loss_name, output_dims)
        if reason:
            raise MpqError(reason)

    def shown(self, trace: float, stderr: float, details: dict, measured: dict | None) -> tuple[float, float | None]:
        """The number a table or chart shows for one layer (or input), and its error bar."""
        return trace, stderr

    def warning(self, trace: float, stderr: float, tol: float, details: dict) -> str | None:
        """Why an estimate is not to be trusted, or None."""
        if stderr == float("inf"):
            return "no standard error (under two probes)"
        if trace <= 2 * stderr:
            return "trace not clearly positive"
        if stderr > tol * trace:
            return f"relative stderr {stderr / trace:.0%} above tolerance"
        return None


class CurvatureMetric(Metric):
    """T_l from `traces` (cached, mpq.sensitivity.curvature); Omega_l(b) = T_l / n_l * ||Q_b(W_l) - W_l||^2."""

    uses_loss = True

    def traces(self, model, names, x, targets, settings, progress, loss_fn, checkpoint) -> tuple[HessianTraces, dict]:
        raise NotImplementedError

    def estimate(self, ctx):
        from mpq.sensitivity.curvature import curvature_estimates

        return curvature_estimates(self, ctx)

    def estimate_inputs(self, ctx, key, groups, shapes, ranges):
        import numpy as np

        from mpq.sensitivity.activation import perturbed_inputs
        from mpq.sensitivity.curvature import cached_traces, layer_traces

        with perturbed_inputs(ctx.model, groups, shapes) as wrapper:
            traces, details, _ = cached_traces(ctx, "inputs", key, self, wrapper, wrapper.names)
        return layer_traces(traces, details, np.zeros(len(groups), dtype=bool))


class HessianTrace(CurvatureMetric):
    """T_l = Tr(H_l), the loss Hessian's diagonal block, by Hutchinson probing (mpq.sensitivity.hessian),
    until every layer's standard error is under `tol` of its trace (HAWQ-V2)."""

    name, label, checkpointed = "hessian", "Tr(H)", True
    uses_quantizer = False
    estimator = "hutchinson"

    def cache_fields(self) -> dict:
        return {}  # the first metric keeps its earlier cache key

    def traces(self, model, names, x, targets, settings, progress, loss_fn, checkpoint):
        from mpq.sensitivity.hessian import hutchinson_traces

        return hutchinson_traces(
            model, names, x, targets, settings, progress, loss_fn=loss_fn, checkpoint=checkpoint
        ), {}


class FisherTrace(CurvatureMetric):
    """T_l = Tr(F_l), F_l = (1/N) sum_i g_i g_i^T with g_i the gradient of sample i's loss: the empirical
    Fisher, exact over the data; its standard error is that of a mean over samples."""

    name, label = "fisher", "Tr(F)"
    uses_quantizer = False
    estimator = "empirical fisher"

    def traces(self, model, names, x, targets, settings, progress, loss_fn, checkpoint):
        from mpq.sensitivity.metrics import fisher_traces

        return fisher_traces(model, names, x, targets, settings, progress, loss_fn=loss_fn), {}


class GaussNewtonTrace(CurvatureMetric):
    """T_l = Tr(H_l) = Tr(G_l) + Tr(R_l): G_l the Gauss-Newton block of the softmax loss (the "true" Fisher),
    from per-sample gradients of log p_c for each sample's most probable classes, summed exactly with
    weights p_c, and one class drawn from the rest (mpq.sensitivity.metrics.gauss_newton_traces); R_l the
    residual, zero where the network is piecewise linear after layer l, measured per layer and estimated
    by Hutchinson probing where it is not (mpq.sensitivity.residual). Cross-entropy (labels or FP32
    classes) and KL losses only."""

    name, label = "gauss_newton", "Tr(H)"
    uses_quantizer = False
    estimator, cache_tag = "gauss-newton", "residual/1"
    LOSSES: ClassVar[tuple[str, ...]] = ("labels", "fp32", "kl")

    def traces(self, model, names, x, targets, settings, progress, loss_fn, checkpoint):
        from mpq.sensitivity.residual import gauss_newton_hessian_traces

        return gauss_newton_hessian_traces(model, names, x, targets, settings, progress, loss_fn)

    def why_not(self, loss_name: str, output_dims: int) -> str | None:
        if loss_name not in self.LOSSES:
            return (
                "the gauss_newton metric is the curvature of a softmax loss: use --loss labels, fp32 or "
                f"kl (not {loss_name}), or --metric hessian"
            )
        if output_dims != 2:
            return (
                f"the gauss_newton metric takes outputs of [batch, classes], not {output_dims}-dimensional "
                "ones (e.g. a language model's per-position logits): use --metric hessian"
            )
        return None


class TopEigenvalue(CurvatureMetric):
    """T_l = n_l * lambda_max(H_l), so Omega_l(b) = lambda_max(H_l) * ||Q_b(W_l) - W_l||^2 (HAWQ-V1), by power
    iteration on the layer's block; its "standard error" is n_l times the last change of the iterate."""

    name, label = "eigenvalue", "λ_max"
    uses_quantizer = False
    estimator = "power iteration"

    def traces(self, model, names, x, targets, settings, progress, loss_fn, checkpoint):
        from mpq.sensitivity.eigenvalue import top_eigenvalues

        return top_eigenvalues(model, names, x, targets, settings, progress, loss_fn=loss_fn)

    def shown(self, trace, stderr, details, measured):
        return details["top_eigenvalue"], details["eigenvalue_change"]

    def warning(self, trace, stderr, tol, details):
        from mpq.sensitivity.eigenvalue import EIGEN_TOL

        eigenvalue, change = details["top_eigenvalue"], details["eigenvalue_change"]
        if eigenvalue <= 0:
            return "top eigenvalue not positive"
        if change > EIGEN_TOL * eigenvalue:
            return f"power iteration not converged (last change {change / eigenvalue:.1%})"
        return None


class MeasuredMetric(Metric):
    """Omega_l(b) measured with layer l alone quantized at b bits (mpq.sensitivity.measured)."""

    per_channel = False
    field: ClassVar[str]  # the OutputError field that is Omega

    def estimate(self, ctx):
        from mpq.sensitivity.measured import measured_estimates

        return measured_estimates(self, ctx)

    def estimate_inputs(self, ctx, key, groups, shapes, ranges):
        from mpq.sensitivity.measured import measured_input_estimates

        return measured_input_estimates(self, ctx, key, groups, ranges)

    def layer_shown(self, s):
        return s.omega_table[CHART_BITS], None

    def shown(self, trace, stderr, details, measured):
        return measured[CHART_BITS], None

    def warning(self, trace, stderr, tol, details):
        return None


class OutputMSE(MeasuredMetric):
    """Omega_l(b) = mean squared change of the model's output, FP32 against layer l alone quantized at b
    bits (plain weights); measured, one pass per layer and width (mpq.sensitivity.output_error)."""

    name, label, field = "output_mse", f"output MSE at W{CHART_BITS}", "mse"
    uses_quantizer = False


class OutputKL(OutputMSE):
    """Omega_l(b) = KL(FP32 || q), q the model with layer l alone quantized at b bits by the plan's
    quantizer (its clipped weights and corrected bias); measured, one pass per layer and width."""

    name, label = "output_kl", f"output KL at W{CHART_BITS}"
    field = "kl"
    uses_quantizer = True


class KLQuadratic(Metric):  # the QuadraticMetric family
    """Omega_l(b) = 1/2 E[delta^T M delta], the second-order KL to FP32 in the layer's actual change of
    output delta (clipping and bias correction included), M the softmax's Fisher; unbiased from one
    backward pass per draw for every layer, width and channel (mpq.sensitivity.kl_quadratic). Weights only."""

    name, label, inputs, fixed_loss = "kl_quadratic", f"½δᵀMδ at W{CHART_BITS}", False, "kl"
    estimator = "sampled quadratic form"

    def estimate(self, ctx):
        from mpq.sensitivity.quadratic import quadratic_estimates

        return quadratic_estimates(ctx)

    def layer_shown(self, s):
        return self.shown(float("nan"), float("nan"), s.details, s.omega_table)

    def suits_default(self, loss_name, loss_named, output_dims, embeddings, activations):
        """The KL of softmax outputs: not for embeddings, not when another loss was named, weights only."""
        return not embeddings and (not loss_named or loss_name == "kl") and not activations

    def shown(self, trace, stderr, details, measured):
        return measured[CHART_BITS], details["kl_quadratic_stderr"][str(CHART_BITS)]

    def warning(self, trace, stderr, tol, details):
        omega, stderr = details["kl_quadratic"][str(CHART_BITS)], details["kl_quadratic_stderr"][str(CHART_BITS)]
        return (
            f"relative stderr {stderr / omega:.0%} at W{CHART_BITS} above tolerance"
            if omega > 0 and stderr > tol * omega
            else None
        )


class KLAnchored(KLQuadratic):
    """kl_quadratic's Omega scaled per layer so that at ANCHOR_BITS it equals the layer's measured one-layer KL
    (mpq.sensitivity.anchor): the quadratic term's shape across widths, the measured level. One forward pass per
    layer over `anchor_samples` samples (ProbeSettings) more than kl_quadratic."""

    name, label = "kl_anchored", f"anchored ½δᵀMδ at W{CHART_BITS}"
    estimator = "sampled quadratic form, scaled to a measured one-layer KL"

    def estimate(self, ctx):
        from mpq.sensitivity.quadratic import anchored_estimates

        return anchored_estimates(ctx)

    def shown(self, trace, stderr, details, measured):
        return measured[CHART_BITS], details["kl_quadratic_stderr"][str(CHART_BITS)] * details.get("anchor_ratio", 1.0)


class MSEAnchored(KLAnchored):
    """kl_anchored for outputs that are not a softmax's logits (embeddings, --loss mse): Omega_l(b) the linearized
    mean squared change of the outputs, 1/n E[delta^T delta] (the quadratic estimator with M = 2I/n), scaled per layer
    to the measured one-layer mean squared change at ANCHOR_BITS (mpq.sensitivity.anchor). Weights only."""

    name, label, fixed_loss = "mse_anchored", f"anchored output MSE at W{CHART_BITS}", "mse"
    estimator = "sampled quadratic form of the output MSE, scaled to a measured one-layer MSE"

    def estimate(self, ctx):
        from mpq.sensitivity.quadratic import anchored_estimates

        return anchored_estimates(ctx, form="mse")

    def suits_default(self, loss_name, loss_named, output_dims, embeddings, activations):
        """Embeddings, or --loss mse: outputs whose distance is their squared change; weights only."""
        return (embeddings or loss_name == "mse") and (not loss_named or loss_name == "mse") and not activations


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        HessianTrace(),
        FisherTrace(),
        GaussNewtonTrace(),
        TopEigenvalue(),
        OutputMSE(),
        OutputKL(),
        KLQuadratic(),
        KLAnchored(),
        MSEAnchored(),
    )
}


def default_metric(loss_name: str, loss_named: bool, output_dims: int, embeddings: bool, activations: bool) -> str:
    """The metric used when none is named: the first of DEFAULT_METRICS that suits the loss (`loss_named`: the user
    chose it), the model's outputs and whether the inputs are analyzed too."""
    return next(
        m
        for m in DEFAULT_METRICS
        if METRICS[m].suits_default(loss_name, loss_named, output_dims, embeddings, activations)
    )


def metric_of(name: str) -> Metric:
    """The registered metric called `name`; MpqError naming the known ones otherwise."""
    if name not in METRICS:
        raise MpqError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
    return METRICS[name]
