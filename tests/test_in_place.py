"""The evaluator without a copy (mpq.verify.apply.InPlace) computes exactly what fake_quant_model's copy computes, and
leaves the model as it found it, even when a call fails."""

import importlib

import pytest
import torch
from torch import nn

from mpq.plan import LayerPlan, Plan
from mpq.quant.affine import ActQuantParams
from mpq.quant.formats import weight_format
from mpq.verify.apply import fake_quant_model, pack_model
from mpq.verify.in_place import InPlace, packed_in_place


class TiedLm(nn.Module):
    """Token embedding tied to the head, a quantized input, a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32, bias=False)
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(h + self.down(torch.relu(self.up(h)))).transpose(1, 2)


def _packed(model, group_size):
    plan = Plan(layers={"head": LayerPlan(4, None), "up": LayerPlan(3, 8), "down": LayerPlan(5, None)})
    act = {"up": ActQuantParams(0.05, 128, 8)}
    return pack_model(model, plan, act, fmt=weight_format("int", group_size))


@pytest.mark.parametrize("keep_codes_bytes", [1 << 28, 0], ids=["codes-kept", "unpacked-per-call"])
@pytest.mark.parametrize("group_size", [None, 16])
def test_in_place_equals_the_copy_and_restores_the_model(group_size, keep_codes_bytes, monkeypatch):
    monkeypatch.setattr(
        importlib.import_module("mpq.verify.in_place"), "KEEP_CODES_BYTES", keep_codes_bytes
    )  # a large plan's path on a small model
    torch.manual_seed(0)
    model = TiedLm().eval()
    ids = torch.randint(0, 50, (3, 7))
    before = {k: (p, p.detach().clone()) for k, p in model.named_parameters()}
    fp32 = model(ids)
    packed = _packed(model, group_size)
    with torch.inference_mode():
        expected = fake_quant_model(model, packed)(ids)
        with packed_in_place(model, packed) as quantized:
            got = quantized(ids)
    assert torch.equal(got, expected)
    assert InPlace(model, packed).keep_codes == (keep_codes_bytes > 0)
    assert not torch.allclose(got, fp32, atol=1e-3)  # the quantization is really there
    for k, p in model.named_parameters():
        assert p is before[k][0] and torch.equal(p, before[k][1]), k
    assert torch.equal(model(ids), fp32)


def test_a_failing_call_leaves_the_weights_restored():
    torch.manual_seed(0)
    model = TiedLm().eval()
    weight, table = model.down.weight, model.embed.weight
    in_place = InPlace(model, _packed(model, None))
    with pytest.raises(RuntimeError), in_place.active():
        model(torch.randint(0, 50, (2, 4)).float())  # an embedding of float ids fails inside the model
    assert model.down.weight is weight and model.embed.weight is table and model.head.weight is table
    assert not model.down._forward_pre_hooks and not model.down._forward_hooks
