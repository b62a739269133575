"""Verification: apply a plan with fake quantization and measure it against FP32 and uniform baselines.

The plan is first exported to packed tensors (mpq.verify.apply), the model computes with them (mpq.verify.in_place),
the measured size is their byte count. The quantizer (the plan's, mpq.quant.quantizer) is fitted on the FP32 model
over the data (mpq.quant.calibration): activation ranges from each layer's observed inputs, weight clip ratios, and
bias correction when it is on. Metrics over the evaluation views: top-1 (with labels), top-1 agreement with FP32,
KL(FP32 || quantized) of the softmax outputs averaged over views (over tokens for per-token logits, with
percentiles: mpq.verify.tokens); the plan's per-layer SQNR (mpq.verify.sqnr) on SQNR_SAMPLES inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.cache import Cache, open_cache
from mpq.cost.budget import Budget, within_budgets
from mpq.cost.costs import CostKind
from mpq.cost.layer_cost import model_costs
from mpq.errors import MpqError
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, quantizable_modules
from mpq.inputs.prepare import check_batch_size, names_embeddings, prepare_inputs, with_held_out
from mpq.inputs.split import EVAL_SPLIT
from mpq.memory import release_free_memory
from mpq.plan import LayerPlan, Plan
from mpq.progress import bar
from mpq.quant.calibration import Calibration, calibrate
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.quant.reference import Fp32Reference, fp32_reference, run_batches
from mpq.quant.widths import check_bits
from mpq.solver.channels import plan_layer_costs
from mpq.verify.apply import PackedModel, pack_model
from mpq.verify.in_place import packed_in_place
from mpq.verify.report import Measurement, Report
from mpq.verify.sqnr import LayerSqnr, layer_sqnr
from mpq.verify.tokens import PERCENTILES, compare

EVALUATOR = "integer-accumulation/3"  # /3: KL per token
SQNR_SAMPLES = 25  # inputs the per-layer SQNR table is measured on
NEAR_BUDGET = 0.05  # uniform baselines up to 5% over a budget are measured too (marked as not fitting)


@dataclass(frozen=True)
class Fitted:
    """A quantizer fitted on the fit data, and the data measurements are made on with its FP32 reference."""

    calibration: Calibration
    data: Dataset
    reference: Fp32Reference


def fitted_and_held_out(
    prepared: PreparedModel,
    data: Dataset,
    eval_data: Dataset | None,
    quantizer: Quantizer,
    batch_size: int,
    cache: Cache,
) -> Fitted:
    """`quantizer` fitted on `data`, and what measurements compare against: `eval_data` and its FP32
    reference when given, else `data` itself (in-sample) and the reference the fit used."""
    reference = fp32_reference(prepared, data, batch_size, cache)
    calibration = calibrate(prepared, data, reference.input_ranges, quantizer, batch_size, cache)
    if eval_data is None:
        return Fitted(calibration, data, reference)
    return Fitted(calibration, eval_data, fp32_reference(prepared, eval_data, batch_size, cache))


def plan_calibration(
    prepared: PreparedModel,
    plan: Plan,
    data: Dataset,
    reference: Fp32Reference,
    batch_size: int = 25,
    cache: Cache = Cache(None),
    quantizer: Quantizer | None = None,
) -> Calibration:
    """The plan's quantizer (or `quantizer`) fitted to the data (mpq.quant.calibration); weight-only: no histograms."""
    activations, q = any(lp.act_bits for lp in plan.layers.values()), quantizer or plan.quantizer
    return calibrate(prepared, data, reference.input_ranges, q, batch_size, cache, activations)


def pack_plan(prepared: PreparedModel, plan: Plan, calibration: Calibration) -> PackedModel:
    """The plan's exported tensors, quantized by the calibrated quantizer (what is measured and exported): the
    layers of the model it was fitted to (equalized or not), with its codes (learned rounding or not)."""
    folded = calibration.model(prepared).folded
    modules = quantizable_modules(folded, embeddings=True)
    layers = plan.layers.items()
    act = {n: calibration.act_params(n, lp.act_bits) for n, lp in layers if lp.act_bits}
    widths = {n: lp.channel_widths(modules[n].weight.shape[0]) for n, lp in layers}
    ratios = {n: calibration.clip_ratio(n, widths[n]) for n in plan.layers}
    biases = {n: calibration.bias(n, modules[n].bias, widths[n]) for n in plan.layers if n in calibration.shifts}
    weights = lambda n: calibration.weight(n, modules[n].weight, widths[n])  # noqa: E731
    return pack_model(folded, plan, act, ratios, biases, calibration.quantizer.format, weights)


def plan_quantizer(plan: Plan, quantizer: Quantizer | None = None) -> Quantizer:
    """What a plan is verified and exported with: `quantizer` (None: the plan's own) at the plan's group size. The
    group size is part of how the plan is stored (its sizes and bits per weight count those scales), so another
    quantizer changes how ranges and scales are chosen, never the layout."""
    own = plan.quantizer
    return replace(quantizer or own, group_size=own.group_size, weight_format=own.weight_format)


def packed_for(
    model,
    plan: Plan,
    data,
    batch_size: int,
    cache_dir,
    quantizer: "str | Quantizer | None",
    device=None,
    eval_split: float = EVAL_SPLIT,
) -> tuple[PreparedModel, PackedModel]:
    """`plan` applied to `model` as verification applies it: plan and model checked, the plan's quantizer (or
    `quantizer`) fitted on `device` on the part of `data` that mpq.verify and mpq.search fit on (all of it less
    the seeded `eval_split` they hold out; 0: all of it), the packed tensors (on the CPU: what mpq.quantize_ and
    the exports are built from), so that an export reproduces the verified model."""
    check_batch_size(batch_size)
    check_quantizable(plan)
    inputs = prepare_inputs(model, data, names_embeddings(model, plan.layers), device)
    check_plan_matches(inputs.prepared, plan)
    inputs = with_held_out(inputs, None, eval_split)
    prepared, data = inputs.prepared, inputs.fit
    cache = open_cache(cache_dir)
    reference = fp32_reference(prepared, data, batch_size, cache)
    chosen = plan_quantizer(plan, None if quantizer is None else resolve_quantizer(quantizer))
    return prepared, pack_plan(
        prepared, plan, plan_calibration(prepared, plan, data, reference, batch_size, cache, chosen)
    )


def packed_logits(prepared: PreparedModel, packed: PackedModel, data: Dataset, batch_size: int) -> torch.Tensor:
    """The evaluator's logits: the model computing with the packed tensors in place, fake-quantized inputs."""
    with packed_in_place(prepared.folded, packed) as quantized:
        return run_batches(quantized, data, batch_size)


def measure_plan(
    prepared: PreparedModel,
    plan: Plan,
    fitted: Fitted,
    name: str,
    batch_size: int,
    cache: Cache,
    budgets: list[Budget] = (),
    latency=None,
) -> Measurement:
    """Export the plan, compute with the exported tensors, and measure it (cached) on `fitted.data` against
    `fitted.reference`, quantized by `fitted.calibration`; its latency predicted by `latency` (mpq.cost.latency)."""
    calibration, data, reference = fitted.calibration, fitted.data, fitted.reference
    packed = pack_plan(prepared, plan, calibration)
    layers = prepared.graph.by_name
    bops = sum(plan_layer_costs(layers[n], lp)[CostKind.BOPS] for n, lp in plan.layers.items())
    latency_s = _predicted_latency(prepared, plan, latency).get(CostKind.LATENCY_S)
    key = measurement_key(prepared, plan, data, calibration)
    cached = cache.load("measurement", key)
    if cached is not None:
        result = Measurement(
            **{**cached, "name": name, "latency_s": latency_s, "bits_per_weight": packed.bits_per_weight}
        )
    else:
        result = _measured(prepared, packed, data, reference, name, bops, batch_size)
        result.latency_s = latency_s
    result.fits_budget = within_budgets(
        result.costs, budgets, latency is not None
    )  # the budgets are not part of the cache key
    if cached is None:
        cache.save("measurement", key, dict(result.__dict__))  # the fields (to_json adds derived keys)
    return result


def measurement_key(prepared: PreparedModel, plan: Plan, data: Dataset, calibration: Calibration) -> dict:
    """What a measurement of `plan` on `data` depends on: the model, the data, the plan's widths, the evaluator and the
    fitted quantizer."""
    key = {
        "model": prepared.fingerprint,
        "data": data.fingerprint(),
        "plan": plan.to_json()["layers"],
        "evaluator": EVALUATOR,
        "quantizer": calibration.quantizer.to_json(),
    }
    if calibration.data_fingerprint != key["data"]:  # calibrated on other data than it is evaluated on
        key["calibration_data"] = calibration.data_fingerprint
    return key


def plan_sqnr(
    prepared: PreparedModel, plan: Plan, data: Dataset, calibration: Calibration, batch_size: int, cache: Cache
) -> list[LayerSqnr]:
    """The plan's per-layer SQNR table (mpq.verify.sqnr) on the first SQNR_SAMPLES samples of `data`, cached."""
    key = {**measurement_key(prepared, plan, data, calibration), "samples": SQNR_SAMPLES}
    cached = cache.load("layer-sqnr", key)
    if cached is not None:
        return [LayerSqnr.from_json(row) for row in cached]
    packed = pack_plan(prepared, plan, calibration)
    rows = layer_sqnr(calibration.model(prepared), packed, data.x[:SQNR_SAMPLES], batch_size)
    cache.save("layer-sqnr", key, [row.to_json() for row in rows])
    return rows


def _measured(
    prepared: PreparedModel,
    packed: PackedModel,
    data: Dataset,
    reference: Fp32Reference,
    name: str,
    bops: float,
    batch_size: int,
) -> Measurement:
    """The model rebuilt from `packed`, run on `data` batch by batch and compared with the FP32 `reference`
    (mpq.verify.tokens: per token for per-token logits)."""
    with packed_in_place(prepared.folded, packed) as quantized:
        compared = compare(quantized, data, reference.logits, batch_size, prepared)
    return Measurement(
        name=name,
        size_bytes=packed.size_bytes,
        bops=bops,
        top1=compared.top1,
        fp32_agreement=float(compared.same_top.float().mean()),
        kl_to_fp32=compared.kl_mean,
        n_eval=len(data),
        cosine_to_fp32=float(compared.cosine.mean()),
        perplexity=compared.perplexity if prepared.outputs.causal_lm else None,
        bits_per_weight=packed.bits_per_weight,
        kl_to_fp32_p99=compared.kl_percentile(PERCENTILES[0]),
        kl_to_fp32_p999=compared.kl_percentile(PERCENTILES[1]),
        n_tokens=len(compared.kl) if compared.per_token else None,
    )


def uniform_plan(
    prepared: PreparedModel, weight_bits: int, act_bits: int | None, group_size: int | None = None
) -> Plan:
    """Every layer at `weight_bits` (inputs at `act_bits`), its weight scales per group of `group_size` (None: per
    channel)."""
    granularity = "channel" if group_size is None else "group"
    layers = {
        layer.name: LayerPlan(
            weight_bits=weight_bits, act_bits=None if layer.kind == "embedding" else act_bits, granularity=granularity
        )
        for layer in prepared.graph.layers
    }
    return Plan(layers=layers, model={"fingerprint": prepared.fingerprint})


def uniform_name(weight_bits: int, act_bits: int | None, group_size: int | None) -> str:
    """ "uniform W4A8", "uniform W4" (float inputs), "uniform W4 g128" (scales per group of 128 weights)."""
    return f"uniform W{weight_bits}" + (f"A{act_bits}" if act_bits else "") + (f" g{group_size}" if group_size else "")


def _predicted_latency(prepared: PreparedModel, plan: Plan, latency) -> dict[str, float]:
    """{"latency_s": the plan's latency} when `latency` covers every layer's widths, else {}."""
    layers = prepared.graph.layers
    if latency is None or not all(latency.covers(layer, plan.layers[layer.name].choice) for layer in layers):
        return {}
    return {CostKind.LATENCY_S: sum(latency.latency_s(layer, plan.layers[layer.name].choice) for layer in layers)}


def _fits(
    prepared: PreparedModel, plan: Plan, budgets: list[Budget], latency=None, fmt: WeightFormat = PER_CHANNEL_INT
) -> bool:
    costs = model_costs(
        prepared.graph.layers,
        {n: lp.choice for n, lp in plan.layers.items()},
        prepared.graph.float_bytes,
        fmt=fmt,
    )
    return within_budgets(costs | _predicted_latency(prepared, plan, latency), budgets, latency is not None)


def check_quantizable(plan: Plan) -> None:
    """MpqError unless `plan` is a Plan whose every width mpq's quantizer supports (a plan file may hold 1-16)."""
    if not isinstance(plan, Plan):
        raise MpqError(f"plan must be an mpq.Plan (mpq.Plan.load(path) reads one), not {type(plan).__name__}")
    for lp in plan.layers.values():
        for bits in [
            lp.weight_bits,
            *(r.weight_bits for r in lp.channel_bits or ()),
            *([lp.act_bits] if lp.act_bits is not None else []),
        ]:
            check_bits(bits)


def check_plan_matches(prepared: PreparedModel, plan: Plan) -> None:
    fingerprint = plan.model.get("fingerprint")
    if fingerprint and fingerprint != prepared.fingerprint:
        raise MpqError("this plan was made for another model (its fingerprint differs): run `mpq search` on this model")
    unknown = sorted(set(plan.layers) - set(prepared.graph.by_name))
    if unknown:
        raise MpqError(
            f"the plan names layers this model lacks ({', '.join(unknown[:3])}): it was made for another model"
        )
    for name, lp in plan.layers.items():
        channels = prepared.graph.by_name[name].out_channels
        if lp.channel_bits and lp.channel_bits[-1].stop != channels:
            raise MpqError(
                f"the plan's channel_bits of layer {name} cover {lp.channel_bits[-1].stop} output channels but the "
                f"layer has {channels}: it was made for another model"
            )


@dataclass(frozen=True)
class VerifyOptions:
    """What verification measures besides the plan: uniform baselines at `baseline_bits` (W8 always) with inputs at
    `act_bits`, in batches of `batch_size`, latencies predicted by `latency` (a model from mpq.cost.latency; None:
    latency budgets are not checked), all quantized with `quantizer` (None: the plan's)."""

    baseline_bits: tuple[int, ...] = (8,)
    act_bits: int | None = 8
    batch_size: int = 25
    latency: object = None
    quantizer: Quantizer | None = None


def plan_act_bits(plan: Plan) -> int | None:
    """The inputs' width of the uniform baselines: the plan's widest (8 for an empty plan, None for float inputs)."""
    return max((lp.act_bits for lp in plan.layers.values() if lp.act_bits), default=None if plan.layers else 8)


def verify_prepared(
    prepared: PreparedModel,
    plan: Plan,
    data: Dataset,
    options: VerifyOptions = VerifyOptions(),
    cache: Cache = Cache(None),
    progress: bool | None = None,
    eval_data: Dataset | None = None,
) -> Report:
    """Measure the plan, FP32, uniform W8 and every uniform width in `options.baseline_bits` that fits the plan's
    budgets (latency budgets by `options.latency`; without one they are not checked), all quantized with
    `options.quantizer` (None: the plan's; at the plan's group size, see plan_quantizer) fitted on `data`, and measured
    on `eval_data` (None: on `data` itself). When the plan quantizes inputs, also uniform W8 with float inputs
    (Report.weight_only: what quantizing the activations costs). `progress`: a bar over the models measured
    (mpq.progress)."""
    check_plan_matches(prepared, plan)
    start = time.perf_counter()
    note = _measured_on(len(data), eval_data)
    quantizer = plan_quantizer(plan, options.quantizer)
    fitted = fitted_and_held_out(prepared, data, eval_data, quantizer, options.batch_size, cache)
    calibration, data, reference = fitted.calibration, fitted.data, fitted.reference
    candidates = _candidates(prepared, plan, options, calibration)
    measured = []
    with bar(len(candidates), "verify", progress, unit="model") as shown:
        for candidate, name in candidates:
            shown.set_postfix_str(name)
            args = (prepared, candidate, fitted, name, options.batch_size, cache, plan.budgets, options.latency)
            measured.append(measure_plan(*args))
            release_free_memory()  # the candidate's codes and activations
            shown.update(1)
    weight_only = measured.pop() if options.act_bits else None
    sqnr = plan_sqnr(prepared, plan, data, calibration, options.batch_size, cache)
    return Report(
        plan=measured[0],
        fp32=reference,
        baselines=measured[1:],
        timings_s={"verify": time.perf_counter() - start},
        layer_sqnr=sqnr,
        latency_model=options.latency.to_json() if options.latency is not None else {},
        quantizer=calibration.quantizer,
        notes=[note],
        weight_only=weight_only,
        outputs=prepared.outputs,
    )


def _candidates(prepared: PreparedModel, plan: Plan, options: VerifyOptions, calibration: Calibration) -> list[tuple]:
    """(plan, name) of what is measured, in order: the plan, the uniform widths that fit its budgets (W8 always) or
    miss them by at most NEAR_BUDGET (measured and marked as not fitting: a plan that loses to a slightly larger
    uniform one shows it), and uniform W8 with float inputs when the baselines quantize inputs."""
    act_bits, latency = options.act_bits, options.latency
    group, fmt = calibration.group_size, calibration.quantizer.format
    near = [replace(b, limit=b.limit * (1 + NEAR_BUDGET)) for b in plan.budgets]
    candidates = [(plan, "mpq plan")]
    for bits in sorted(set(options.baseline_bits) | {8}, reverse=True):
        uniform = uniform_plan(prepared, bits, act_bits, group)
        if bits == 8 or _fits(prepared, uniform, near, latency, fmt):
            candidates.append((uniform, uniform_name(bits, act_bits, group)))
    if act_bits:
        candidates.append((uniform_plan(prepared, 8, None, group), uniform_name(8, None, group)))
    return candidates


def _measured_on(calibration: int, eval_data: Dataset | None) -> str:
    """Which data the numbers are measured on: held out, or the `calibration` samples themselves."""
    if eval_data is None:
        return (
            f"measured on the {calibration} calibration samples themselves (in-sample): "
            "give --eval-data (eval_data=) for held-out numbers"
        )
    if eval_data.held_out_seed is not None:
        return (
            f"calibrated on {calibration} samples, measured on {len(eval_data)} held-out samples: "
            f"a seeded split of --data ({eval_data.description}); give --eval-data for your own"
        )
    return f"calibrated on {calibration} samples (--data), measured on {len(eval_data)} held-out samples (--eval-data)"
