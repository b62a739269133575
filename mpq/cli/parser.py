"""The `mpq` command line: options, their types and their groups (what `mpq COMMAND --help` shows)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from mpq.cli.cache_command import add_cache_parser
from mpq.cli.examples import (
    BUDGET,
    EXAMPLES,
    GROUPS,
    LATENCY,
    MODEL,
    OUTPUT,
    PROBING,
    PROBLEM,
    QUANTIZER,
    SOLVER,
    SWEEP,
    TIMING,
    TOP,
)
from mpq.cli.types import (
    act_bits_type,
    count,
    fraction,
    group_size_type,
    on_off,
    positive,
    verify_points_type,
    widths_type,
)
from mpq.errors import MpqError
from mpq.inputs.split import EVAL_SPLIT

DEFAULT_OUT = "mpq-out"


DEFAULT_SENSITIVITY_PLOT = f"{DEFAULT_OUT}/sensitivity.png"


class _Version(argparse.Action):
    """`mpq --version`: prints `mpq VERSION` (mpq.versions) and exits 0; the version is read only then."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from mpq.versions import mpq_version

        print(f"mpq {mpq_version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise MpqError(f"{message} (see `{self.prog} --help`)")


def _group(p: argparse.ArgumentParser, title: str):
    """The option group `title` of `p` (what `--help` shows under that heading), made when first asked for."""
    return next((g for g in p._action_groups if g.title == title), None) or p.add_argument_group(title)


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its options in groups (mpq.cli.examples.GROUPS) and ends with examples."""
    p = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for title in GROUPS[name]:
        _group(p, title)
    return p


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    _group(p, OUTPUT).add_argument(
        "--json", action="store_true", help=f"print {what} as one JSON object on stdout instead of tables (docs/cli.md)"
    )


def _add_pin_options(parser: argparse.ArgumentParser) -> None:
    p = _group(parser, BUDGET)
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


def _add_search_options(p: argparse.ArgumentParser) -> None:
    """Widths, Omega margin, output folder, evaluation batch, pins, solver and probe options (search and pareto)."""
    from mpq.plan.settings import SearchSpace

    space = SearchSpace()
    parser, p = p, _group(p, BUDGET)  # p: the group of widths and pins; parser: for the other groups
    widths = lambda ws: ",".join("none" if w is None else str(w) for w in ws)  # noqa: E731
    p.add_argument(
        "--bits", type=widths_type, default=space.bits, help=f"candidate weight widths (default {widths(space.bits)})"
    )
    p.add_argument(
        "--act-bits",
        type=act_bits_type,
        default=space.act_bits,
        help=f"candidate activation widths, e.g. 4,8, or 'none' to keep activations in float (default {widths(space.act_bits)}); with several, `mpq search` chooses them by the inputs' sensitivity (see --no-act-sensitivity), `mpq pareto` by cost",
    )
    p.add_argument(
        "--trace-margin",
        type=float,
        default=space.trace_margin,
        help=f"Omega uses trace + this many standard errors (default {space.trace_margin:g}; 0 = plain HAWQ-V2)",
    )
    _group(parser, OUTPUT).add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    _group(parser, OUTPUT).add_argument(
        "--eval-batch-size", type=positive, default=25, help="samples per evaluation batch (default 25)"
    )
    _add_quantizer_options(parser, default_is_plan=False)
    _add_pin_options(parser)
    _add_solver_options(parser)
    _add_probe_options(parser)


def _add_solver_options(p: argparse.ArgumentParser) -> None:
    from mpq.plan.settings import DEFAULT_SOLVER, SOLVERS

    p = _group(p, SOLVER)
    p.add_argument(
        "--solver",
        choices=SOLVERS,
        default=DEFAULT_SOLVER,
        help=f"the integer-program solver: highs (the highspy package) or cbc (bundled with PuLP); default {DEFAULT_SOLVER}",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop the solver after SECONDS with the best plan found; plan.json records whether it is proven optimal and its gap (default: no limit)",
    )


def solver_settings(args):
    from mpq.plan.settings import SolverSettings

    return SolverSettings(name=args.solver, time_limit_s=args.time_limit)


def search_space(args):
    """The SearchSpace of `mpq search` / `mpq pareto` from their options."""
    from mpq.plan.settings import SearchSpace

    extra = {k: getattr(args, k) for k in ("granularity", "channel_group", "act_sensitivity") if hasattr(args, k)}
    return SearchSpace(
        bits=args.bits, act_bits=args.act_bits, trace_margin=args.trace_margin, **pins_arg(args), **extra
    )


def pins_arg(args) -> dict:
    from mpq.solver.pins import parse_keep

    keep: dict[str, int] = {}
    for text in args.keep:
        name, bits = parse_keep(text)
        if keep.get(name, bits) != bits:
            raise MpqError(f"layer {name} is kept at both {keep[name]} and {bits} bits; keep it at one width")
        keep[name] = bits
    return {"keep": keep, "keep_first": args.keep_first, "keep_last": args.keep_last}


def _add_latency_options(p: argparse.ArgumentParser) -> None:
    p = _group(p, LATENCY)
    p.add_argument(
        "--latency-device",
        metavar="NAME|FILE.toml",
        help="latency by a roofline model of a device: a shipped name (arm-cortex-a76, nvidia-t4, nvidia-a100) or a device .toml (mpq 0.1.0 took it as --device, which still works)",
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
        help="the batch latencies are looked up at (default: 1 for --latency-device, the table's batch for --latency-table)",
    )


def latency_arg(args):
    """The latency model the options name, or None; MpqError for both at once."""
    from mpq.cost.latency import latency_model

    device = args.latency_device or (args.device if args.device and not COMPUTE_DEVICE.match(args.device) else None)
    if device and args.latency_table:
        raise MpqError("give either --latency-device or --latency-table, not both")
    if args.latency_batch is not None and not (device or args.latency_table):
        raise MpqError("--latency-batch needs --latency-device or --latency-table")
    return latency_model(device or args.latency_table, args.latency_batch)


COMPUTE_DEVICE = re.compile(r"^(cpu|auto|cuda(:[0-9]+)?)$")


def compute_device(args):
    """The torch.device the model runs on (mpq.device.resolve_device): cpu (the default), cuda, cuda:N, or auto
    (cuda when a GPU is visible, else cpu); under torchrun with CUDA, this rank's cuda:LOCAL_RANK. A GPU that
    is not visible is refused in one line."""
    from mpq.device import resolve_device
    from mpq.sensitivity.distributed import local_device

    text = getattr(args, "device", None) or "cpu"
    if not COMPUTE_DEVICE.match(text):
        if hasattr(args, "latency_device"):
            text = "cpu"  # mpq 0.1.0's --device NAME: a latency device, read by latency_arg
        else:
            raise MpqError(f"--device {text} is not a device to run on: use cpu, cuda, cuda:N or auto")
    return local_device(resolve_device(text, label="--device"))


def need_latency_model(budgets, latency) -> None:
    from mpq.cost.roofline import shipped_devices
    from mpq.solver.build import check_latency_budgets

    how = f"pass --latency-device NAME ({', '.join(shipped_devices())}, or a .toml) or --latency-table FILE.csv (written by `mpq profile`)"
    check_latency_budgets(budgets, latency, how)


def _add_quantizer_options(p: argparse.ArgumentParser, default_is_plan: bool) -> None:
    from mpq.quant.quantizer import ACT_OBSERVER_NAMES, PRESETS, WEIGHT_CLIP_NAMES

    base = "the plan's quantizer" if default_is_plan else "the default preset"
    p = _group(p, QUANTIZER)
    p.add_argument(
        "--quantizer",
        choices=tuple(PRESETS),
        help=f"quantizer preset (default: {base}); the three options below override its parts",
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
    if not default_is_plan:  # a plan's group size is part of how it is stored: verify and export keep it
        p.add_argument(
            "--group-size",
            type=group_size_type,
            metavar="G",
            help="one float32 weight scale per group of G consecutive weights of an output channel (a power of two, e.g. 32, 64, 128; GPTQ/torchao style) instead of one per channel; sizes and bits per weight count the scales (default: none)",
        )


def quantizer_arg(args, default_is_plan: bool):
    from mpq.quant.quantizer import resolve_quantizer

    parts = {
        "act_observer": args.act_observer,
        "weight_clip": args.weight_clip,
        "bias_correction": args.bias_correction,
        "group_size": getattr(args, "group_size", None),
    }
    if default_is_plan and args.quantizer is None and all(v is None for v in parts.values()):
        return None  # the plan's own
    return resolve_quantizer(args.quantizer, **parts)


def _add_config(p: argparse.ArgumentParser) -> None:
    _group(p, MODEL).add_argument(
        "--config",
        metavar="FILE",
        help='take options from a recipe .toml, or repeat a run from the plan.json it wrote (its "recipe"); options on the command line take precedence (mpq.cli.recipe)',
    )


def _add_eval_data(p: argparse.ArgumentParser) -> None:
    _group(p, MODEL).add_argument(
        "--eval-data",
        help="the data the plan is measured on, read like --data (the quantizer is calibrated on --data); default: a seeded --eval-split of --data (as the report says)",
    )
    _group(p, MODEL).add_argument(
        "--eval-split",
        type=fraction,
        default=EVAL_SPLIT,
        help=f"without --eval-data, the share of --data held out for measurement, whole groups (a photo's views) at a time, seed 0; 0 measures in-sample (default {EVAL_SPLIT})",
    )


def _add_model_data(p: argparse.ArgumentParser) -> None:
    p = _group(p, MODEL)
    p.add_argument(
        "--model",
        help="package.module:attr or path/file.py:attr (an nn.Module or a function returning one), a torch.export .pt2 file, or hf:DIR (a transformers save_pretrained folder, offline); default: built-in EfficientNet-Lite0",
    )
    p.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument for the model function (int/float/bool/str); for hf: models pooling=cls|mean|none or output=FIELD; repeatable",
    )
    p.add_argument("--weights", help="state dict (.pth) to load into the model, read with weights_only=True")
    p.add_argument(
        "--data",
        help=".npz/.pt with x (and integer labels y) or named inputs (input_ids, attention_mask, ...), a folder of images, text (.txt, .jsonl) for an hf: model, or module:function returning a Dataset, tensor or DataLoader; default: the built-in 200 ImageNet views",
    )
    p.add_argument(
        "--seq-len",
        type=positive,
        help="tokens per sample of text data (.txt: windows of that many tokens; .jsonl: each record padded or cut to it)",
    )
    p.add_argument(
        "--transform",
        choices=("imagenet", "torchvision", "none"),
        default="imagenet",
        help="for image folders: imagenet = EfficientNet-Lite's (resize 256 bicubic, centre crop 224, (x-127)/128); torchvision = torchvision's ImageNet evaluation transform (resize 256 bilinear, crop 224, x/255 normalized by the ImageNet mean and std); none = x/255 as is (default imagenet)",
    )


def _add_probe_options(p: argparse.ArgumentParser) -> None:
    from mpq.sensitivity.registry import DEFAULT_METRICS, METRICS
    from mpq.sensitivity.settings import HVP_METHODS, PROBINGS, ProbeSettings

    d = ProbeSettings()
    parser, p = p, _group(p, PROBING)
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
    p.add_argument(
        "--hvp",
        choices=HVP_METHODS,
        default=d.hvp,
        help=f"Hessian-vector product: fwd-rev (forward over reverse, faster) or rev-rev (reverse over reverse, for losses torch.func cannot trace); default {d.hvp}",
    )
    p.add_argument(
        "--probing",
        choices=PROBINGS,
        default=d.probing,
        help=f"per-layer: one Hessian-vector product per layer and probe, each layer probed until its own tolerance (far less variance, reports/hessian.md); all-layers: one product per probe for every layer; default {d.probing}",
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
        help=f"samples per chunk of a probe's batch, to bound memory (default {d.chunk_size}: the whole batch at once); same result",
    )
    p.add_argument(
        "--loss",
        help="labels (cross-entropy with y; default with labels), fp32 (cross-entropy to FP32 predictions; default without), mse or kl (to FP32 outputs), or module:callable loss(output, target)",
    )
    p.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default=None,
        help=f"sensitivity metric (default: the first of {', '.join(DEFAULT_METRICS)} that applies: kl_anchored for weights with logits and no other --loss, gauss_newton when the inputs' widths are searched too, hessian for embeddings or a non-softmax loss): gauss_newton (Tr(H) as the Gauss-Newton trace, every layer at once, plus the residual where the network is curved after a layer), hessian (Tr(H) by per-layer Hutchinson probing, HAWQ-V2), fisher (empirical Fisher trace, exact), eigenvalue (top eigenvalue of each layer's Hessian block), output_mse (measured output MSE with only that layer quantized), output_kl (measured KL to FP32 with only that layer quantized by the plan's quantizer), kl_quadratic (second-order KL to FP32 in the layer's actual quantization error), kl_anchored (kl_quadratic scaled per layer to its measured one-layer KL at 4 bits)",
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
    add_progress_options(parser)


def add_progress_options(p: argparse.ArgumentParser) -> None:
    """--device, --quiet and --verbose (how a command that runs the model runs); without --quiet or
    --verbose, progress bars show only when stderr is a terminal."""
    _group(p, MODEL).add_argument(
        "--device",
        metavar="cpu|cuda|cuda:N|auto",
        help="where every stage runs (default cpu; auto: cuda when a GPU is visible, else cpu)",
    )
    group = _group(p, OUTPUT).add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    group.add_argument(
        "--verbose",
        action="store_true",
        help="progress bars even when stderr is not a terminal (default: only on a terminal)",
    )


def progress_arg(args) -> bool | None:
    """False for --quiet, True for --verbose, else None (only when stderr is a terminal)."""
    return False if args.quiet else True if args.verbose else None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mpq",
        description="Mixed-precision quantization search and sensitivity analysis for PyTorch.",
        epilog=TOP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print mpq's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    search = _command(sub, "search", "find the widths of every layer within a budget, verify and report them")
    _add_model_data(search)
    _add_config(search)
    _add_eval_data(search)
    _group(search, BUDGET).add_argument(
        "--budget",
        action="append",
        required=True,
        help="4MB, 3.5MiB, 500KB, 20GBOPs, 2.5ms (with --device or --latency-table), 4.25bpw (bits per quantized weight, scales included) ...; repeat for several (all must hold)",
    )
    _add_search_options(search)
    _group(search, BUDGET).add_argument(
        "--no-act-sensitivity",
        dest="act_sensitivity",
        action="store_const",
        const=False,
        default=None,
        help="with several --act-bits, choose them by cost only (the widest the budgets allow), not by the inputs' sensitivity",
    )
    _group(search, BUDGET).add_argument(
        "--granularity",
        choices=("layer", "channel"),
        default="layer",
        help="one weight width per layer (default), or per group of output channels (see --channel-group)",
    )
    _group(search, BUDGET).add_argument(
        "--proxy-check",
        type=count,
        default=0,
        metavar="N",
        help="also measure N random plans at the same size budget and report how well Omega ranks them (Spearman rho of Omega and KL; N >= 2; default 0: off)",
    )
    _group(search, BUDGET).add_argument(
        "--channel-group",
        type=int,
        default=1,
        metavar="N",
        help="with --granularity channel: N consecutive output channels share one width (default 1)",
    )
    _add_latency_options(search)
    _add_json(search, '{"plan": plan.json, "report": report.json, "files": [...]}')

    sweep = _command(
        sub, "pareto", "the least-Omega plan at each budget of a range, some measured, against uniform widths"
    )
    _add_model_data(sweep)
    _add_config(sweep)
    _add_eval_data(sweep)
    _group(sweep, SWEEP).add_argument(
        "--budget",
        required=True,
        help="a range LOW:HIGH[:STEPS] (default 30 steps), e.g. 2MB:6MB, 10GBOPs:40GBOPs:20 or 3bpw:6bpw, or a list 2MB,3MB,4MB (sizes, BOPs or bits per weight)",
    )
    _group(sweep, SWEEP).add_argument(
        "--also-budget",
        action="append",
        default=[],
        help="a budget that holds at every point, e.g. 20GBOPs while sweeping sizes; repeatable",
    )
    _group(sweep, SWEEP).add_argument(
        "--verify-points",
        type=verify_points_type,
        default=6,
        help="how many feasible points to measure, evenly spread (ends included), 'all', or 0 (default 6)",
    )
    _add_search_options(sweep)
    _add_json(sweep, "pareto.json's content")

    solve = _command(sub, "solve", "solve a bit-allocation problem given as a CSV table and write plan.json")
    _group(solve, PROBLEM).add_argument(
        "--table",
        required=True,
        help="CSV: layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s[,group]; one row per layer and choice",
    )
    _group(solve, PROBLEM).add_argument(
        "--budget",
        action="append",
        required=True,
        help="4MB, 123456B, 20GBOPs, 2.5ms, 800us ...; repeat for several (all must hold)",
    )
    _group(solve, OUTPUT).add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    _add_pin_options(solve)
    _add_solver_options(solve)
    _add_json(solve, "plan.json's content")

    sens = _command(sub, "sensitivity", "per-layer Hessian traces with standard errors")
    _add_model_data(sens)
    _group(sens, OUTPUT).add_argument(
        "--json", action="store_true", help="print the mpq.sensitivity/1 JSON instead of a table"
    )
    _group(sens, PROBING).add_argument(
        "--activations",
        action="store_true",
        help="also the sensitivity of every layer's input (what chooses --act-bits in mpq search)",
    )
    _group(sens, OUTPUT).add_argument(
        "--plot",
        default=DEFAULT_SENSITIVITY_PLOT,
        metavar="FILE.png",
        help=f"bar chart of the per-layer sensitivities with error bars (default {DEFAULT_SENSITIVITY_PLOT})",
    )
    _group(sens, OUTPUT).add_argument("--no-plot", action="store_true", help="write no chart")
    _add_probe_options(sens)

    check = _command(sub, "verify", "measure a saved plan on a model and data; writes report.json")
    check.add_argument("plan", help="plan.json written by `mpq search`")
    _add_model_data(check)
    _add_eval_data(check)
    _group(check, OUTPUT).add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder for report.json (default {DEFAULT_OUT}/)"
    )
    _group(check, OUTPUT).add_argument(
        "--eval-batch-size", type=positive, default=25, help="samples per evaluation batch (default 25)"
    )
    _group(check, OUTPUT).add_argument(
        "--cache-dir", help="where measurements are cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)"
    )
    _group(check, OUTPUT).add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_progress_options(check)
    _add_latency_options(check)
    _add_json(check, "report.json's content")

    profile = _command(
        sub,
        "profile",
        "measure each layer's latency on this machine, for the widths it runs natively; writes a latency table",
    )
    _add_model_data(profile)
    _group(profile, OUTPUT).add_argument(
        "--out", required=True, help="the CSV latency table to write (for --latency-table)"
    )
    _group(profile, TIMING).add_argument("--batch", type=positive, default=1, help="samples per timed call (default 1)")
    _group(profile, TIMING).add_argument(
        "--repeats", type=positive, default=25, help="timed calls per layer and width; the median is kept (default 25)"
    )
    _group(profile, TIMING).add_argument(
        "--warmup", type=count, default=5, help="untimed calls before them (default 5)"
    )
    _group(profile, TIMING).add_argument(
        "--threads", type=positive, help="torch threads while timing (default: torch's own choice)"
    )
    add_progress_options(profile)
    _add_json(profile, "the latency table's rows")
    _add_quantizer_options(check, default_is_plan=True)

    export = _command(sub, "export", "write a plan applied to its model: packed weights, ONNX QDQ or a torchao config")
    export.add_argument("plan", help="plan.json written by `mpq search`")
    _group(export, OUTPUT).add_argument(
        "--format",
        choices=("packed", "onnx", "torchao"),
        default="packed",
        help="packed (one file of bit-packed weights), onnx (QDQ) or torchao (FqnToConfig JSON); default packed",
    )
    _group(export, OUTPUT).add_argument("--out", required=True, help="the file to write")
    _add_model_data(export)
    _group(export, MODEL).add_argument(
        "--batch-size", type=positive, default=25, help="samples per calibration batch (default 25)"
    )
    _group(export, MODEL).add_argument(
        "--eval-split",
        type=fraction,
        default=EVAL_SPLIT,
        help=f"calibrate, as `mpq search` and `mpq verify` did, on --data less this share they hold out for measurement (whole groups, seed 0); 0 calibrates on all of --data (default {EVAL_SPLIT})",
    )
    _group(export, OUTPUT).add_argument(
        "--cache-dir", help="where the FP32 calibration is cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)"
    )
    _group(export, OUTPUT).add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_progress_options(export)
    _add_quantizer_options(export, default_is_plan=True)
    _add_json(export, "what was written (file, format, bytes)")
    add_cache_parser(sub)
    return parser


def load_inputs(args):
    from mpq.inputs.specs import load_data_spec, load_model_spec, parse_model_args
    from mpq.models import DEFAULT_DATA_SPEC, DEFAULT_MODEL_SPEC

    device = compute_device(args)
    if args.model and not args.data:
        raise MpqError("--model needs --data too (the built-in data suits only the built-in model)")
    if not args.model and (args.model_arg or args.weights):
        raise MpqError("--model-arg and --weights apply to your own --model; add --model")
    model = load_model_spec(args.model or DEFAULT_MODEL_SPEC, parse_model_args(args.model_arg), args.weights)
    data = load_data_spec(args.data or DEFAULT_DATA_SPEC, args.transform, model, args.seq_len)
    return model.to(
        device
    ), data  # the CLI's own copy, moved in place; the API runs where it is and moves the data there


def eval_data_arg(args, model=None):
    """The held-out data of --eval-data (read like --data), or None."""
    from mpq.inputs.specs import load_data_spec

    return (
        None
        if getattr(args, "eval_data", None) is None
        else load_data_spec(args.eval_data, args.transform, model, args.seq_len)
    )


def probe_settings(args):
    from mpq.sensitivity.settings import ProbeSettings

    names = ("tol", "max_probes", "max_seconds", "batch_size", "seed", "hvp", "chunk_size", "probing", "anchor_samples")
    return ProbeSettings(**{name: getattr(args, name) for name in names})


def analyze_options(args) -> dict:
    """The keywords of mpq.analyze (and the analysis part of mpq.search / mpq.pareto) from the options."""
    return {
        "probes": probe_settings(args),
        "cache_dir": False if args.no_cache else args.cache_dir,
        "progress": progress_arg(args),
        "loss": args.loss,
        "quantize_embeddings": args.quantize_embeddings,
        "metric": args.metric,
    }


def writable_folder(path: str) -> Path:
    """The output folder, checked before any work but created only when something is written into it
    (a run that fails leaves no folder behind)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise MpqError(f"output folder {out} is a file; choose another with --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or not _takes_files(existing):
        raise MpqError(
            f"cannot create output folder {out}: {existing} is not a writable folder; choose another with --out"
        )
    return out


def _takes_files(folder: Path) -> bool:
    """Whether a file can be created in `folder` (root passes os.access on read-only mounts and /proc)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def created(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MpqError(f"cannot create output folder {out} ({exc.strerror}); choose another with --out") from None
    return out
