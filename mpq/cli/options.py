"""The `mpq` command's options, one function per option group (what `mpq COMMAND --help` shows under
each heading); several commands share a group. Defaults come from the typed settings, imported inside
the functions: building the parser imports no torch."""

from __future__ import annotations

import argparse

from mpq.cli.examples import BUDGET, LATENCY, MODEL, OUTPUT, PROBING, QUANTIZER, SOLVER
from mpq.cli.types import act_bits_type, fraction, group_size_type, on_off, positive, widths_type
from mpq.inputs.split import EVAL_SPLIT

DEFAULT_OUT = "mpq-out"
DEFAULT_SENSITIVITY_PLOT = f"{DEFAULT_OUT}/sensitivity.png"


def group(p: argparse.ArgumentParser, title: str):
    """The option group `title` of `p` (what `--help` shows under that heading), made when first asked for."""
    return next((g for g in p._action_groups if g.title == title), None) or p.add_argument_group(title)


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    group(p, OUTPUT).add_argument(
        "--json", action="store_true", help=f"print {what} as one JSON object on stdout instead of tables (docs/cli.md)"
    )


def add_pin_options(parser: argparse.ArgumentParser) -> None:
    p = group(parser, BUDGET)
    p.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="NAME=BITS",
        help="keep layer NAME at BITS weight bits, e.g. fc=8; repeatable",
    )
    p.add_argument(
        "--keep-first",
        type=int,
        metavar="BITS",
        help="keep the first quantizable layer (execution order) at BITS weight bits",
    )
    p.add_argument(
        "--keep-last",
        type=int,
        metavar="BITS",
        help="keep the last quantizable layer (execution order) at BITS weight bits",
    )


def add_search_options(p: argparse.ArgumentParser) -> None:
    """Widths, Omega margin, output folder, evaluation batch, pins, solver and probe options (search and pareto)."""
    from mpq.plan.settings import SearchSpace

    space = SearchSpace()
    parser, p = p, group(p, BUDGET)  # p: the group of widths and pins; parser: for the other groups
    widths = lambda ws: ",".join("none" if w is None else str(w) for w in ws)  # noqa: E731
    p.add_argument(
        "--bits", type=widths_type, default=space.bits, help=f"candidate weight widths (default {widths(space.bits)})"
    )
    p.add_argument(
        "--act-bits",
        type=act_bits_type,
        default=space.act_bits,
        help=(
            "candidate activation widths, e.g. 4,8, or 'none' to keep activations in float (default "
            f"{widths(space.act_bits)}); with several, `mpq search` chooses them by the inputs' sensitivity (see "
            "--no-act-sensitivity), `mpq pareto` by cost"
        ),
    )
    p.add_argument(
        "--trace-margin",
        type=float,
        default=space.trace_margin,
        help=f"Omega uses trace + this many standard errors (default {space.trace_margin:g}; 0 = plain HAWQ-V2)",
    )
    group(parser, OUTPUT).add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    group(parser, OUTPUT).add_argument(
        "--eval-batch-size", type=positive, default=25, help="samples per evaluation batch (default 25)"
    )
    add_quantizer_options(parser, default_is_plan=False)
    add_pin_options(parser)
    add_solver_options(parser)
    add_probe_options(parser)


def add_solver_options(p: argparse.ArgumentParser) -> None:
    from mpq.plan.settings import DEFAULT_SOLVER, SOLVERS

    p = group(p, SOLVER)
    p.add_argument(
        "--solver",
        choices=SOLVERS,
        default=DEFAULT_SOLVER,
        help=(
            "the integer-program solver: highs (the highspy package) or cbc (bundled with PuLP); default "
            f"{DEFAULT_SOLVER}"
        ),
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help=(
            "stop the solver after SECONDS with the best plan found; plan.json records whether it is proven "
            "optimal and its gap (default: no limit)"
        ),
    )


def add_latency_options(p: argparse.ArgumentParser) -> None:
    p = group(p, LATENCY)
    p.add_argument(
        "--latency-device",
        metavar="NAME|FILE.toml",
        help=(
            "latency by a roofline model of a device: a shipped name (arm-cortex-a76, nvidia-t4, nvidia-a100) or a "
            "device .toml (mpq 0.1.0 took it as --device, which still works)"
        ),
    )
    p.add_argument(
        "--latency-table",
        metavar="FILE.csv",
        help="latency by a measured table (written by `mpq profile`); its rows limit the widths offered",
    )
    p.add_argument(
        "--latency-batch",
        type=positive,
        metavar="N",
        help=(
            "the batch latencies are looked up at (default: 1 for --latency-device, the table's batch for "
            "--latency-table)"
        ),
    )


def add_quantizer_options(p: argparse.ArgumentParser, default_is_plan: bool) -> None:
    from mpq.quant.quantizer import ACT_OBSERVER_NAMES, PRESETS, ROUNDING_NAMES, WEIGHT_CLIP_NAMES

    base = "the plan's quantizer" if default_is_plan else "the default preset"
    p = group(p, QUANTIZER)
    p.add_argument(
        "--quantizer",
        choices=tuple(PRESETS),
        help=f"quantizer preset (default: {base}); the options below override its parts",
    )
    p.add_argument(
        "--act-observer",
        choices=ACT_OBSERVER_NAMES,
        help="activation ranges: min-max, percentile 99.99%%, histogram MSE-optimal, or ACIQ (Laplace)",
    )
    p.add_argument(
        "--weight-clip",
        choices=WEIGHT_CLIP_NAMES,
        help="weight scales per channel: min-max, or the clip ratio of least squared error",
    )
    p.add_argument(
        "--bias-correction",
        type=on_off,
        metavar="on|off",
        help="correct each layer's bias for the mean output shift its weight quantization causes",
    )
    p.add_argument(
        "--rounding",
        choices=ROUNDING_NAMES,
        help="weights round to the nearest code, or up or down as AdaRound learns per layer on the data",
    )
    p.add_argument(
        "--equalize",
        type=on_off,
        metavar="on|off",
        help="cross-layer equalization of consecutive layers' channel ranges before calibration",
    )
    if not default_is_plan:  # a plan's group size is part of how it is stored: verify and export keep it
        p.add_argument(
            "--group-size",
            type=group_size_type,
            metavar="G",
            help=(
                "one float32 weight scale per group of G consecutive weights of an output channel (a power of two, "
                "e.g. 32, 64, 128; GPTQ/torchao style) instead of one per channel; sizes and bits per weight count "
                "the scales (default: none)"
            ),
        )


def add_config(p: argparse.ArgumentParser) -> None:
    group(p, MODEL).add_argument(
        "--config",
        metavar="FILE",
        help=(
            'take options from a recipe .toml, or repeat a run from the plan.json it wrote (its "recipe"); options '
            "on the command line take precedence (mpq.cli.recipe)"
        ),
    )


def add_eval_data(p: argparse.ArgumentParser) -> None:
    group(p, MODEL).add_argument(
        "--eval-data",
        help=(
            "the data the plan is measured on, read like --data (the quantizer is calibrated on --data); default: "
            "a seeded --eval-split of --data (as the report says)"
        ),
    )
    group(p, MODEL).add_argument(
        "--eval-split",
        type=fraction,
        default=EVAL_SPLIT,
        help=(
            "without --eval-data, the share of --data held out for measurement, whole groups (a photo's views) at "
            f"a time, seed 0; 0 measures in-sample (default {EVAL_SPLIT})"
        ),
    )


def add_model_data(p: argparse.ArgumentParser) -> None:
    p = group(p, MODEL)
    p.add_argument(
        "--model",
        help=(
            "package.module:attr or path/file.py:attr (an nn.Module or a function returning one), a torch.export "
            ".pt2 file, an .onnx file, or hf:DIR (a transformers save_pretrained folder, offline); default: built-in "
            "EfficientNet-Lite0"
        ),
    )
    p.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help=(
            "keyword argument for the model function (int/float/bool/str); for hf: models pooling=cls|mean|none or "
            "output=FIELD; repeatable"
        ),
    )
    p.add_argument("--weights", help="state dict (.pth) to load into the model, read with weights_only=True")
    p.add_argument(
        "--data",
        help=(
            ".npz/.pt with x (and integer labels y) or named inputs (input_ids, attention_mask, ...), a folder of "
            "images, text (.txt, .jsonl) for an hf: model, or module:function returning a Dataset, tensor or "
            "DataLoader; default: the built-in 200 ImageNet views"
        ),
    )
    p.add_argument(
        "--seq-len",
        type=positive,
        help=(
            "tokens per sample of text data (.txt: windows of that many tokens; .jsonl: each record padded or cut "
            "to it)"
        ),
    )
    p.add_argument(
        "--transform",
        choices=("imagenet", "torchvision", "none"),
        default="imagenet",
        help=(
            "for image folders: imagenet = EfficientNet-Lite's (resize 256 bicubic, centre crop 224, (x-127)/128); "
            "torchvision = torchvision's ImageNet evaluation transform (resize 256 bilinear, crop 224, x/255 "
            "normalized by the ImageNet mean and std); none = x/255 as is (default imagenet)"
        ),
    )


def add_probe_options(p: argparse.ArgumentParser) -> None:
    """The sensitivity group: how the estimates are probed, the metric and loss, and the cache; with
    --device, --quiet and --verbose."""
    _add_probing(group(p, PROBING))
    _add_probe_engine(group(p, PROBING))
    _add_metric(group(p, PROBING))
    add_progress_options(p)


def _add_probing(p) -> None:
    """Tolerance, caps, batch and seed of the probing metrics."""
    from mpq.sensitivity.settings import ProbeSettings

    d = ProbeSettings()
    p.add_argument(
        "--tol",
        type=float,
        default=d.tol,
        help=f"stop probing when every layer's stderr is below this fraction of its trace (default {d.tol:g})",
    )
    p.add_argument(
        "--max-probes", type=int, default=d.max_probes, help=f"most Hutchinson probes (default {d.max_probes})"
    )
    p.add_argument(
        "--max-seconds", type=float, default=d.max_seconds, help=f"most seconds of probing (default {d.max_seconds:g})"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"samples per Hessian-vector product (default {d.batch_size})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"seed of the probes (default {d.seed}); the same seed gives the same plan",
    )


def _add_probe_engine(p) -> None:
    """How the estimates are computed: the Hessian-vector product, per-layer probing, anchor samples, chunks."""
    from mpq.sensitivity.settings import HVP_METHODS, PROBINGS, ProbeSettings

    d = ProbeSettings()
    p.add_argument(
        "--hvp",
        choices=HVP_METHODS,
        default=d.hvp,
        help=(
            "Hessian-vector product: fwd-rev (forward over reverse, faster) or rev-rev (reverse over reverse, for "
            f"losses torch.func cannot trace); default {d.hvp}"
        ),
    )
    p.add_argument(
        "--probing",
        choices=PROBINGS,
        default=d.probing,
        help=(
            "per-layer: one Hessian-vector product per layer and probe, each layer probed until its own tolerance "
            "(far less variance, reports/hessian.md); all-layers: one product per probe for every layer; default "
            f"{d.probing}"
        ),
    )
    p.add_argument(
        "--anchor-samples",
        type=int,
        default=d.anchor_samples,
        help=f"kl_anchored: samples each layer's measured one-layer KL is taken on (default {d.anchor_samples})",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=d.chunk_size,
        help=(
            f"samples per chunk of a probe's batch, to bound memory (default {d.chunk_size}: the whole batch at "
            "once); same result"
        ),
    )


def _add_metric(p) -> None:
    """The metric, the loss it is taken on, embeddings, and the cache."""
    from mpq.sensitivity.registry import DEFAULT_METRICS, METRICS

    p.add_argument(
        "--loss",
        help=(
            "labels (cross-entropy with y; default with labels), fp32 (cross-entropy to FP32 predictions; default "
            "without), mse or kl (to FP32 outputs), or module:callable loss(output, target)"
        ),
    )
    p.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default=None,
        help=(
            f"sensitivity metric (default: the first of {', '.join(DEFAULT_METRICS)} that applies: kl_anchored for"
            " weights with logits and no other --loss, mse_anchored for embeddings or --loss mse, gauss_newton "
            "when the inputs' widths are searched too, hessian for other losses): gauss_newton (Tr(H) as the "
            "Gauss-Newton trace, every layer at once, plus the residual where the network is curved after a "
            "layer), hessian (Tr(H) by per-layer Hutchinson probing, HAWQ-V2), fisher (empirical Fisher trace, "
            "exact), eigenvalue (top eigenvalue of each layer's Hessian block), output_mse (measured output MSE "
            "with only that layer quantized), output_kl (measured KL to FP32 with only that layer quantized by "
            "the plan's quantizer), kl_quadratic (second-order KL to FP32 in the layer's actual quantization "
            "error), kl_anchored (kl_quadratic scaled per layer to its measured one-layer KL at 4 bits), "
            "mse_anchored (the same for the outputs' mean squared change)"
        ),
    )
    p.add_argument(
        "--quantize-embeddings",
        action="store_true",
        help="quantize nn.Embedding tables too (per row; their integer inputs stay as they are)",
    )
    p.add_argument(
        "--cache-dir", help="where sensitivities and measurements are cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def add_progress_options(p: argparse.ArgumentParser) -> None:
    """--device, --quiet and --verbose (how a command that runs the model runs); without --quiet or
    --verbose, progress bars show only when stderr is a terminal."""
    group(p, MODEL).add_argument(
        "--device",
        metavar="cpu|cuda|cuda:N|auto",
        help="where every stage runs (default cpu; auto: cuda when a GPU is visible, else cpu)",
    )
    either = group(p, OUTPUT).add_mutually_exclusive_group()
    either.add_argument("--quiet", action="store_true", help="no progress bars")
    either.add_argument(
        "--verbose",
        action="store_true",
        help="progress bars even when stderr is not a terminal (default: only on a terminal)",
    )
