"""Estimates of the quadratic metrics: kl_quadratic's ½E[δᵀMδ] in the quantizer's real change of each layer
(mpq.sensitivity.kl_quadratic), and kl_anchored's scaling of it to one measured one-layer KL per layer
(mpq.sensitivity.anchor). kl_quadratic's estimate is cached under its own name and shared by both."""

from __future__ import annotations

import time

import numpy as np

from mpq.sensitivity.anchor import ANCHOR_BITS, anchor_indices, anchor_ratio, anchored_layers, spread_ratios
from mpq.sensitivity.distributed import Ranks
from mpq.sensitivity.context import REFERENCE_BATCH, AnalysisContext
from mpq.sensitivity.estimates import Estimates, LayerEstimate
from mpq.sensitivity.kl_quadratic import DRAWS, KlQuadratic, LayerDeltas, kl_quadratic_omegas
from mpq.sensitivity.output_error import weight_output_errors


def cached_kl_quadratic(ctx: AnalysisContext, form: str = "kl") -> tuple[KlQuadratic, bool]:
    """The kl_quadratic estimate for the quantizer's weights (`form` "mse": of the outputs' mean squared change,
    mpq.sensitivity.kl_quadratic), cached; and whether it came from the cache."""
    settings_key = {k: v for k, v in ctx.key["settings"].items() if k != "anchor_samples"}
    widths = ctx.quantizer.format.widths
    full_key = {
        **ctx.key,
        "settings": settings_key,
        "metric": "kl_quadratic",
        "quantizer": ctx.quantizer.sensitivity_json(),
        "draws": DRAWS,
        "bits": list(widths),
    } | ({"form": form} if form != "kl" else {})
    ranks = Ranks.current()
    cached = ranks.broadcast(ctx.cache.load("kl-quadratic", full_key) if ranks.is_main else None)
    from_cache = cached is not None
    if cached is None:
        ctx.clip_ratios, ctx.shifts  # fitted (or read) now, before any batch's activations are held
        deltas = LayerDeltas(list(ctx.names), widths, ctx.deltas)
        s = ctx.settings
        args = (s.batch_size, DRAWS, s.seed, ctx.progress, form)
        result = kl_quadratic_omegas(ctx.model, ctx.data.x, deltas, *args)
        cached = {
            "omega": result.omega,
            "stderr": result.stderr,
            "samples": result.samples,
            "draws": result.draws,
            "seconds": result.seconds,
            "channel_omega": {n: {b: c.tolist() for b, c in t.items()} for n, t in result.channel_omega.items()},
        }
        if ranks.is_main:
            ctx.cache.save("kl-quadratic", full_key, cached)
    per_width = lambda table, cast: {n: {int(b): cast(v) for b, v in t.items()} for n, t in table.items()}  # noqa: E731
    quadratic = KlQuadratic(
        omega=per_width(cached["omega"], float),
        stderr=per_width(cached["stderr"], float),
        channel_omega=per_width(cached["channel_omega"], np.asarray),
        samples=cached["samples"],
        draws=cached["draws"],
        seconds=cached["seconds"],
    )
    return quadratic, from_cache


def cached_anchor_kls(
    ctx: AnalysisContext, samples: int, names: list[str] | None = None, field: str = "kl"
) -> dict[str, float]:
    """Each of `names`' (default: every layer's) measured one-layer KL (`field` "mse": mean squared output change)
    at ANCHOR_BITS on `samples` anchor samples, cached. Under torchrun each rank measures every size-th anchor
    sample and the sums are added up."""
    names = list(ctx.names) if names is None else names
    anchor_key = {k: v for k, v in ctx.key.items() if k not in ("metric", "settings")} | {
        "quantizer": ctx.quantizer.sensitivity_json(),
        "bits": ANCHOR_BITS,
        "samples": samples,
    }
    if names != list(ctx.names):
        anchor_key["anchored"] = names
    if field != "kl":
        anchor_key["field"] = field
    ranks = Ranks.current()
    cached = ranks.broadcast(ctx.cache.load("kl-anchor", anchor_key) if ranks.is_main else None)
    if cached is None:
        chosen = anchor_indices(len(ctx.data), samples)
        x = ctx.data.x[chosen[ranks.rank :: ranks.size].to(ctx.data.x.device)]
        deltas = lambda name: ctx.deltas(name, (ANCHOR_BITS,))  # noqa: E731
        args = (x, (ANCHOR_BITS,), REFERENCE_BATCH, ctx.progress, deltas, True)
        errors = weight_output_errors(ctx.model, names, *args) if len(x) else {}
        value = lambda n: getattr(errors[n][ANCHOR_BITS], field)  # noqa: E731
        cached = {n: value(n) for n in names} if ranks.size == 1 else {}
        if ranks.size > 1:  # each rank's mean KL times its samples, added up, over all the samples
            mine = [value(n) * len(x) if errors else 0.0 for n in names]
            cached = dict(zip(names, (ranks.sum_arrays([np.asarray(mine)])[0] / len(chosen)).tolist()))
        if ranks.is_main:
            ctx.cache.save("kl-anchor", anchor_key, cached)
    return {n: float(v) for n, v in cached.items()}


def _layer_estimate(name: str, quadratic: KlQuadratic, unscaled: KlQuadratic) -> LayerEstimate:
    details = {
        "kl_quadratic": {str(b): v for b, v in unscaled.omega[name].items()},
        "kl_quadratic_stderr": {str(b): v for b, v in unscaled.stderr[name].items()},
        "samples": quadratic.samples,
        "draws": quadratic.draws,
    }
    return LayerEstimate(quadratic.omega[name], quadratic.stderr[name], quadratic.channel_omega[name], None, details)


def quadratic_estimates(ctx: AnalysisContext) -> Estimates:
    """kl_quadratic: every layer's ½E[δᵀMδ] at every width and channel."""
    quadratic, from_cache = cached_kl_quadratic(ctx)
    layers = [_layer_estimate(n, quadratic, quadratic) for n in ctx.names]
    return Estimates(layers, quadratic.seconds, "measured", from_cache)


def anchored_estimates(ctx: AnalysisContext, form: str = "kl") -> Estimates:
    """kl_anchored: kl_quadratic's estimate scaled per layer by r_l = KL_l(ANCHOR_BITS) / Ω_l(ANCHOR_BITS);
    mse_anchored (`form` "mse"): the same with the mean squared output change in place of the KL."""
    unscaled, from_cache = cached_kl_quadratic(ctx, form)
    started = time.perf_counter()
    # a language model's layers repeat per block: a few per role are measured, the rest interpolated (anchor.py)
    subset = ctx.prepared.outputs.causal_lm or ctx.prepared.outputs.embeddings
    names = anchored_layers(ctx.names) if subset else None
    kls = cached_anchor_kls(ctx, ctx.settings.anchor_samples, names, "mse" if form == "mse" else "kl")
    ratios = {n: anchor_ratio(kl, unscaled.omega[n][ANCHOR_BITS]) for n, kl in kls.items()}
    ratios = spread_ratios(ctx.names, ratios) if subset else ratios
    quadratic = unscaled.scaled(ratios)
    quadratic.seconds += time.perf_counter() - started
    layers = []
    for name in ctx.names:
        layer = _layer_estimate(name, quadratic, unscaled)
        layer.details |= {"anchor_ratio": ratios[name]} | ({"anchor_kl": kls[name]} if name in kls else {})
        layers.append(layer)
    return Estimates(layers, quadratic.seconds, "measured", from_cache)
