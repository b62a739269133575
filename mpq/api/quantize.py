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

from torch import nn

from mpq.inputs.adapter import ModelAdapter
from mpq.inputs.graph import module_calls_visible
from mpq.inputs.split import EVAL_SPLIT
from mpq.plan import Plan
from mpq.plan.keywords import checks_keywords
from mpq.quant.quantizer import Quantizer
from mpq.verify.apply import fake_quant_model
from mpq.verify.measure import packed_for


@checks_keywords("batch_size", "cache_dir", "eval_split")
def quantize_(
    model,
    plan: Plan,
    data,
    *,
    batch_size: int = 25,
    cache_dir=None,
    quantizer: "str | Quantizer | None" = None,
    device=None,
    eval_split: float = EVAL_SPLIT,
) -> nn.Module:
    """A fake-quantized copy of `model` with `plan` applied, calibrated on `data`, in eval mode.

    `data`: what calibrates the activation ranges, clipping and bias correction (an mpq.Dataset, a tensor
    of inputs or an (x, y) tuple), as in mpq.verify; `batch_size`: samples per calibration batch;
    `cache_dir`: the FP32 reference and calibration cache (None: the default folder; False: none);
    `quantizer`: a preset name or mpq.Quantizer instead of the plan's. Its outputs are exactly the
    evaluator's logits (mpq.verify.measure.packed_logits). Raises MpqError for a plan of another model.
    `device`: where it is calibrated and where the returned module is ("cpu", "cuda", "cuda:N", "auto" or a
    torch.device; None: where `model`'s parameters are). `eval_split`: calibrated, as the verified model was, on
    `data` less the seeded share mpq.verify and mpq.search hold out for measurement (0: on all of `data`).
    """
    prepared, packed = packed_for(model, plan, data, batch_size, cache_dir, quantizer, device, eval_split)
    quantized = fake_quant_model(prepared.folded, packed).eval()
    if isinstance(quantized, ModelAdapter) and not isinstance(model, ModelAdapter):
        quantized = quantized.inner  # the user's model type (a transformers model is called with its named inputs)
    _calls_every_module(quantized)
    return quantized


def _calls_every_module(model: nn.Module) -> None:
    """Keep PyTorch's fused transformer fast path off while `model` runs, as the evaluator does
    (mpq.inputs.graph.module_calls_visible, entered before each call and left after it): it skips the
    layers' quantizing hooks."""
    active = []

    def before(module, args):
        active.append(module_calls_visible())
        active[-1].__enter__()

    def after(module, args, output):
        active.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after)
