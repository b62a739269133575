"""What verification measures, as typed values: one Measurement per model, the Report of a plan, and
the proxy check's points (random plans at the same size: does Omega predict their KL?)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpq.cost.costs import CostKind, Costs
from mpq.inputs.adapter import Outputs
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.quant.reference import Fp32Reference
from mpq.verify.sqnr import LayerSqnr
from mpq.versions import versions


@dataclass
class Measurement:
    """One model measured on the evaluation views."""

    name: str
    size_bytes: int
    bops: float
    top1: float | None
    fp32_agreement: float
    kl_to_fp32: float
    n_eval: int
    fits_budget: bool = True
    cosine_to_fp32: float | None = None  # mean cosine similarity of each output to the FP32 one
    latency_s: float | None = None  # predicted by the plan's latency model (mpq.cost.latency), not measured
    perplexity: float | None = None  # a causal LM's next-token perplexity on the evaluation data
    bits_per_weight: float | None = None  # of the packed tensors: code and scale bits over the quantized weights
    kl_to_fp32_p99: float | None = None  # percentiles of KL(FP32 ‖ q) over the tokens (samples) kl_to_fp32 averages
    kl_to_fp32_p999: float | None = None
    n_tokens: int | None = None  # tokens compared, for per-token logits (fp32_agreement: share of them, same top)

    @property
    def costs(self) -> Costs:
        """The measured size, BOPs and bits per weight, and the predicted latency when there is one
        (mpq.cost.budget.within_budgets)."""
        costs = Costs({CostKind.SIZE_BYTES: self.size_bytes, CostKind.BOPS: self.bops})
        if self.latency_s is not None:
            costs[CostKind.LATENCY_S] = self.latency_s
        if self.bits_per_weight is not None:
            costs[CostKind.BITS_PER_WEIGHT] = self.bits_per_weight
        return costs

    @property
    def same_top_pct(self) -> float | None:
        """Per-token logits: the percentage of tokens whose top prediction is FP32's (llama.cpp's "same top")."""
        return None if self.n_tokens is None else 100.0 * self.fp32_agreement

    def token_metrics(self) -> dict:
        """What LLM users read (llama.cpp's --kl-divergence): KL per token, mean and percentiles, same top %."""
        if self.n_tokens is None:
            return {}
        return {
            "kl_to_fp32_p99": self.kl_to_fp32_p99,
            "kl_to_fp32_p999": self.kl_to_fp32_p999,
            "same_top_pct": self.same_top_pct,
            "n_tokens": self.n_tokens,
        }

    def to_json(self) -> dict:
        return dict(self.__dict__) | self.token_metrics()


def process_peak_memory() -> dict[str, int]:
    """The process's peak resident memory so far ("ram"), and the GPU's peak allocation when CUDA was used ("gpu")."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    peaks = {"ram": int(rss if sys.platform == "darwin" else rss * 1024)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["gpu"] = max(int(torch.cuda.max_memory_allocated(i)) for i in range(torch.cuda.device_count()))
    return peaks


@dataclass
class Report:
    """What verification measured: the plan, FP32, and the uniform baselines."""

    plan: Measurement
    fp32: Fp32Reference
    baselines: list[Measurement]
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layer_sqnr: list[LayerSqnr] = field(default_factory=list)
    latency_model: dict = field(default_factory=dict)  # where predicted latencies come from (none: empty)
    quantizer: Quantizer = DEFAULT_QUANTIZER  # what the plan and the baselines were quantized with
    proxy: "ProxyCheck | None" = None  # random plans at the same size: does Omega predict? (mpq.verify.proxy)
    versions: dict = field(
        default_factory=versions
    )  # of mpq, torch, numpy, pulp, highspy that measured it (mpq.versions)
    weight_only: Measurement | None = (
        None  # uniform W8 with float inputs, when the plan quantizes inputs: the activations' cost
    )
    outputs: Outputs = Outputs()  # what the model's outputs are: logits (agreement, KL) or embeddings (cosine)
    peak_memory_bytes: dict = field(default_factory=process_peak_memory)  # when it was measured (process_peak_memory)

    def distance(self, m: Measurement) -> float:
        """How far a measured model is from FP32, by the measure its outputs call for: KL for logits, 1 - cosine for
        embeddings."""
        return 1.0 - (m.cosine_to_fp32 or 0.0) if self.outputs.embeddings else m.kl_to_fp32

    @property
    def distance_name(self) -> str:
        """What `distance` measures, as reports name it."""
        return "1 − cosine" if self.outputs.embeddings else "KL"

    def to_json(self) -> dict:
        predicted = (
            {"predicted": {"latency_s": self.plan.latency_s, "latency_model": self.latency_model}}
            if self.latency_model
            else {}
        )
        return (
            {
                "schema": "mpq.report/1",
                "measured": {
                    "size_bytes": self.plan.size_bytes,
                    "bops": self.plan.bops,
                    "bits_per_weight": self.plan.bits_per_weight,
                },
                "metrics": {
                    "top1": self.plan.top1,
                    "fp32_agreement": self.plan.fp32_agreement,
                    "kl_to_fp32": self.plan.kl_to_fp32,
                    "cosine_to_fp32": self.plan.cosine_to_fp32,
                    "n_eval": self.plan.n_eval,
                    **self.plan.token_metrics(),
                    **({"perplexity": self.plan.perplexity} if self.plan.perplexity is not None else {}),
                },
                "fp32": {"size_bytes": self.fp32.size_bytes, "top1": self.fp32.top1}
                | ({"perplexity": self.fp32.perplexity} if self.fp32.perplexity is not None else {}),
                "outputs": self.outputs.to_json(),
                "baselines": [b.to_json() for b in self.baselines],
                "timings_s": self.timings_s,
                "peak_memory_bytes": self.peak_memory_bytes,
                "notes": self.notes,
                "layer_sqnr": [row.to_json() for row in self.layer_sqnr],
                "quantizer": self.quantizer.to_json(),
                "versions": dict(self.versions),
            }
            | predicted
            | ({"proxy_check": self.proxy.to_json()} if self.proxy is not None else {})
            | ({"weight_only_reference": self.weight_only.to_json()} if self.weight_only is not None else {})
        )


@dataclass
class ProxyPoint:
    kind: str  # "mpq plan" or "random"
    size_bytes: int
    omega: float
    kl_to_fp32: float
    fp32_agreement: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ProxyCheck:
    """The searched plan and the random plans, measured; rho = Spearman(Omega, KL) over all of them."""

    points: list[ProxyPoint]
    spearman: float
    seed: int

    @property
    def randoms_above(self) -> int:
        """Random plans whose KL is larger than the searched plan's."""
        plan = self.points[0]
        return sum(p.kl_to_fp32 > plan.kl_to_fp32 for p in self.points[1:])

    def to_json(self) -> dict:
        return {
            "spearman_omega_kl": self.spearman,
            "seed": self.seed,
            "random_plans": len(self.points) - 1,
            "points": [p.to_json() for p in self.points],
        }

    def summary(self) -> str:
        return (
            f"Ω against measured KL over the plan and {len(self.points) - 1} random plans at the same size: Spearman "
            "ρ = "
            f"{self.spearman:.2f}; {self.randoms_above} of {len(self.points) - 1} random plans have a larger KL than "
            "the plan"
        )
