"""Activation observers, weight clipping and bias correction on known distributions and the tiny model."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import mpq
from mpq.cache import Cache
from mpq.errors import MpqError
from mpq.inputs.data import Dataset
from mpq.inputs.graph import prepare_model
from mpq.plan import LayerPlan, Plan
from mpq.quant.affine import affine_params, channel_quant_error
from mpq.quant.calibration import calibrate, weight_clip_ratios
from mpq.quant.observers import (
    ACT_OBSERVERS,
    AciqActObserver,
    InputHistogram,
    MseActObserver,
    MseWeightClip,
    PercentileActObserver,
    aciq_alpha,
    clipped_channel_error,
)
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.quant.reference import fp32_reference
from mpq.report.markdown import write_outputs
from mpq.verify.apply import unpack_model
from mpq.verify.measure import pack_plan


def real_mse(x: torch.Tensor, lo: float, hi: float, bits: int) -> float:
    """Mean squared error of the affine quantizer spanning [lo, hi] on the values themselves."""
    return float((affine_params(lo, hi, bits).fake_quantize(x) - x).double().pow(2).mean())


def laplace(shape, seed: int = 0) -> torch.Tensor:
    """Laplace(0, 1) samples by the inverse CDF, seeded."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5
    return (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def test_percentile_observer_ignores_an_outlier():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    x[7] = 1000.0
    hist = InputHistogram.of(x, float(x.min()), float(x.max()), bins=2**16)
    lo, hi = PercentileActObserver(99.99).clip_range(hist, 8)
    assert ACT_OBSERVERS["minmax"].clip_range(hist, 8)[1] == 1000.0
    # the 99.99th percentile of N(0, 1) is 3.72; 200,000 samples and bins of 0.016 put it within 0.15
    assert 3.57 < hi < 3.87 and -3.87 < lo < -3.57


def test_mse_observer_beats_min_max_and_matches_a_brute_force_grid_on_laplace_data():
    x = laplace(20_000)
    hist = InputHistogram.of(x, float(x.min()), float(x.max()))
    for bits, gain in ((4, 0.5), (6, 0.8)):
        lo, hi = MseActObserver().clip_range(hist, bits)
        chosen = real_mse(x, lo, hi, bits)
        assert chosen < gain * real_mse(x, float(x.min()), float(x.max()), bits)
        grid_lo = np.linspace(float(x.min()), 0, 26)[:-1]
        grid_hi = np.linspace(0, float(x.max()), 26)[1:]
        brute = min(real_mse(x, a, b, bits) for a in grid_lo for b in grid_hi)
        assert chosen <= 1.02 * brute
        assert chosen >= 0.9 * brute  # the grid is fine enough to be near the optimum too


def test_mse_observer_keeps_exact_zeros_free_and_clips_non_negative_inputs_at_zero():
    x = torch.relu(laplace(50_000, seed=1))  # half the values exactly 0
    hist = InputHistogram.of(x, 0.0, float(x.max()))
    assert hist.zeros == float((x == 0).sum()) and hist.total == x.numel()
    lo, hi = MseActObserver().clip_range(hist, 4)
    assert lo == 0.0 and 0 < hi < float(x.max())


def test_aciq_alpha_reproduces_banner_et_al():
    assert [aciq_alpha(b, "laplace") for b in (2, 3, 4)] == pytest.approx([2.83, 3.89, 5.03], abs=0.01)
    assert [aciq_alpha(b, "gauss") for b in (2, 3, 4)] == pytest.approx([1.71, 2.15, 2.55], abs=0.01)


def test_aciq_observer_clips_laplace_data_at_alpha_times_b():
    x = laplace(200_000) * 0.5  # Laplace with b = 0.5
    hist = InputHistogram.of(x, float(x.min()), float(x.max()))
    lo, hi = AciqActObserver().clip_range(hist, 4)
    assert hi == pytest.approx(5.03 * 0.5, rel=0.02) and lo == pytest.approx(-5.03 * 0.5, rel=0.02)


def test_mse_weight_clip_is_never_worse_than_min_max_and_finds_the_grid_optimum():
    small = 0.05 * laplace((16, 3, 3, 3), seed=3)  # 27 weights a channel: every grid ratio is tried
    large = 0.05 * laplace((16, 576), seed=4)  # coarse, then fine around the best
    clip = MseWeightClip()
    for bits in range(2, 9):
        for weight, tolerance in ((small, 1e-6), (large, 0.01)):
            clipped = channel_quant_error(weight, bits, clip.ratios(weight, bits))
            assert torch.all(clipped <= channel_quant_error(weight, bits) * (1 + 1e-6))
            brute = clipped_channel_error(weight, bits, clip.grid()).min(dim=0).values
            assert torch.all(clipped <= brute * (1 + tolerance)), (bits, tolerance)
    assert (clip.ratios(small, 2) < 0.9).all()  # at 2 bits every channel clips


@pytest.fixture
def tiny_prepared(tiny_model, tiny_data):
    x, y = tiny_data
    return prepare_model(tiny_model, x[:2]), Dataset(x=x, y=y)


def layer_inputs(prepared, data) -> dict[str, torch.Tensor]:
    """Every layer's input in the FP32 model, over all the data."""
    seen, modules = {}, {n: prepared.folded.get_submodule(n) for n in ("conv1", "conv2", "fc")}
    handles = [m.register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0])) for n, m in modules.items()]
    with torch.no_grad():
        prepared.folded(data.x)
    for h in handles:
        h.remove()
    return seen


def test_bias_correction_zeroes_the_mean_output_shift_over_the_calibration_data(tiny_prepared):
    prepared, data = tiny_prepared
    plan = Plan(layers={"conv1": LayerPlan(3, 8), "conv2": LayerPlan(2, 8), "fc": LayerPlan(3, 8)})
    reference = fp32_reference(prepared, data, 8, Cache(None))
    corrected = pack_plan(
        prepared, plan, calibrate(prepared, data, reference.input_ranges, Quantizer("minmax", "mse", True), 7)
    )
    plain = pack_plan(
        prepared, plan, calibrate(prepared, data, reference.input_ranges, Quantizer("minmax", "mse", False), 7)
    )
    inputs = layer_inputs(prepared, data)
    rebuilt = unpack_model(prepared.folded, corrected)[0]
    for name in ("conv1", "conv2", "fc"):
        fp32, layer = prepared.folded.get_submodule(name), rebuilt.get_submodule(name)
        x = inputs[name].double()
        if name == "fc":
            y_fp32 = F.linear(x, fp32.weight.double(), fp32.bias.double())
            y_q = F.linear(x, layer.weight.double(), corrected.tensors["fc.bias"].double())
            shift = (y_q - y_fp32).mean(dim=0)
            # for a Linear layer delta = (Q(W) - W) E[x]
            uncorrected = (layer.weight.double() - fp32.weight.double()) @ x.mean(dim=0)
        else:
            conv = lambda w, b: F.conv2d(x, w.double(), b.double(), fp32.stride, fp32.padding)  # noqa: E731
            shift = (conv(layer.weight, corrected.tensors[f"{name}.bias"]) - conv(fp32.weight, fp32.bias)).mean(
                dim=(0, 2, 3)
            )
            uncorrected = (conv(layer.weight, plain.tensors[f"{name}.bias"]) - conv(fp32.weight, fp32.bias)).mean(
                dim=(0, 2, 3)
            )
        assert torch.allclose(shift, torch.zeros_like(shift), atol=1e-6), name
        assert uncorrected.abs().max() > 1e-3, name  # there was a shift to correct
        assert torch.allclose(
            plain.tensors[f"{name}.bias"].double() - corrected.tensors[f"{name}.bias"].double(), uncorrected, atol=1e-6
        )


def test_mixed_channel_widths_take_each_channels_clip_ratio_and_bias_shift_at_its_width(tiny_prepared):
    prepared, data = tiny_prepared
    reference = fp32_reference(prepared, data, 8, Cache(None))
    calibration = calibrate(prepared, data, reference.input_ranges, Quantizer("minmax", "mse", True), 7)
    conv = prepared.folded.get_submodule("conv2")
    n = conv.weight.shape[0]
    widths = [3 if c % 3 == 0 else 6 for c in range(n)]
    mixed, bias = calibration.weight("conv2", conv.weight, widths), calibration.bias("conv2", conv.bias, widths)
    for b in (3, 6):
        alone = calibration.weight("conv2", conv.weight, [b] * n)
        at_b = torch.tensor(widths) == b
        assert torch.equal(mixed.codes[at_b], alone.codes[at_b]) and torch.equal(mixed.scale[at_b], alone.scale[at_b])
        assert torch.equal(bias[at_b], calibration.bias("conv2", conv.bias, [b] * n)[at_b])
    assert not torch.equal(calibration.bias("conv2", conv.bias, [3] * n), calibration.bias("conv2", conv.bias, [6] * n))


def test_omega_uses_the_weight_quantizer_the_plan_is_verified_with(tiny_prepared, tmp_path):
    prepared, data = tiny_prepared
    sens = mpq.analyze(prepared, data, max_probes=4, min_probes=4, cache_dir=False, progress=False, quantizer="default")
    ratios = weight_clip_ratios(prepared, sens.quantizer.weight_clip)
    for name, s in sens.layers.items():
        w = prepared.folded.get_submodule(name).weight
        for bits in (2, 4, 8):
            assert s.quant_error[bits] == pytest.approx(
                float(channel_quant_error(w, bits, ratios[name][bits]).sum()), rel=1e-6
            )
    minmax = mpq.analyze(
        prepared, data, max_probes=4, min_probes=4, cache_dir=False, progress=False, quantizer="minmax"
    )
    assert all(sens.layers[n].quant_error[3] < minmax.layers[n].quant_error[3] for n in sens.layers)
    plan = mpq.solve(sens, "200B", bits=(2, 4, 8))
    assert plan.settings.quantizer == sens.quantizer
    report = mpq.verify(prepared, plan, data, baseline_bits=(8,), cache_dir=False)
    assert report.quantizer == sens.quantizer and report.to_json()["quantizer"]["weight_clip"] == "mse"
    # report.md names the quantizer, embeds layers.png, and shows a Pareto plot found beside it
    write_outputs(tmp_path, sens, plan, report)
    assert (
        "Quantizer: activation ranges percentile, weight clipping mse, bias correction on"
        in (tmp_path / "report.md").read_text()
    )
    assert (
        "![layers](layers.png)" in (tmp_path / "report.md").read_text()
        and "pareto" not in (tmp_path / "report.md").read_text()
    )
    (tmp_path / "pareto.png").write_bytes((tmp_path / "layers.png").read_bytes())
    write_outputs(tmp_path, sens, plan, report)
    assert "![pareto.png](pareto.png)" in (tmp_path / "report.md").read_text()


def test_quantizer_names_are_checked():
    assert resolve_quantizer("minmax", bias_correction=True) == Quantizer("minmax", "minmax", True)
    with pytest.raises(MpqError, match="act_observer='p99' must be one of minmax, percentile"):
        resolve_quantizer(act_observer="p99")
    with pytest.raises(MpqError, match="unknown quantizer preset"):
        resolve_quantizer("best")
