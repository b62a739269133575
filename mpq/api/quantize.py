"""`mpq.quantize_(model, plan, data)`: the plan applied to a model, in memory.

    qmodel = mpq.quantize_(model, plan, data)   # a new module; `model` is left as it was
    logits = qmodel(x)

The returned module is the fake-quantized copy mpq's evaluator measures (`mpq verify`, report.json):
BatchNorm folded, the quantizer fitted on `data` exactly as verification fits it (mpq.verify.measure:
fp32_reference, plan_calibration, pack_plan), the weights rebuilt from the packed tensors and every
layer with a quantized input computing in integer arithmetic (mpq.verify.apply.fake_quant_model).
Despite the trailing underscore (torchao's name for the idea), nothing is changed in place.
"""

from __future__ import annotations

import torch
from torch import nn

from mpq.cache import open_cache
from mpq.errors import MpqError
from mpq.inputs.prepare import as_dataset, as_prepared
from mpq.plan import Plan
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.quant.reference import fp32_reference
from mpq.quant.widths import check_bits
from mpq.verify.apply import fake_quant_model
from mpq.verify.measure import check_plan_matches, pack_plan, plan_calibration


def quantize_(model, plan: Plan, data, *, batch_size: int = 25, cache_dir=None, quantizer: "str | Quantizer | None" = None) -> nn.Module:
    """A fake-quantized copy of `model` with `plan` applied, calibrated on `data`, in eval mode.

    `data`: what calibrates the activation ranges, clipping and bias correction (an mpq.Dataset, a tensor
    of inputs or an (x, y) tuple), as in mpq.verify; `batch_size`: samples per calibration batch;
    `cache_dir`: the FP32 reference and calibration cache (None: the default folder; False: none);
    `quantizer`: a preset name or mpq.Quantizer instead of the plan's. Its outputs are exactly the
    evaluator's logits (mpq.verify.measure.packed_logits). Raises MpqError for a plan of another model.
    """
    if not isinstance(plan, Plan):
        raise MpqError(f"plan must be an mpq.Plan (mpq.Plan.load(path) reads one), not {type(plan).__name__}")
    for lp in plan.layers.values():
        for bits in (lp.weight_bits, *(run.weight_bits for run in lp.channel_bits or ()), *((lp.act_bits,) if lp.act_bits else ())):
            check_bits(bits)
    data = as_dataset(data)
    modules = dict(model.named_modules()) if isinstance(model, nn.Module) else {}
    prepared = as_prepared(model, data, any(isinstance(modules.get(name), nn.Embedding) for name in plan.layers))
    check_plan_matches(prepared, plan)
    cache = open_cache(cache_dir)
    reference = fp32_reference(prepared, data, batch_size, cache)
    calibration = plan_calibration(prepared, plan, data, reference, batch_size, cache, None if quantizer is None else resolve_quantizer(quantizer))
    quantized = fake_quant_model(prepared.folded, pack_plan(prepared, plan, calibration)).eval()
    _calls_every_module(quantized)
    return quantized


def _calls_every_module(model: nn.Module) -> None:
    """Turn off PyTorch's fused transformer fast path while `model` runs (as the evaluator does,
    mpq.inputs.graph.module_calls_visible): it skips the layers' quantizing hooks."""
    state = {}

    def before(module, args):
        state["enabled"] = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def after(module, args, output):
        torch.backends.mha.set_fastpath_enabled(state.pop("enabled", True))

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after)
