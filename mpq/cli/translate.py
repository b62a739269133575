"""The parsed options of the `mpq` command as the Python API's typed settings and arguments (SearchSpace,
SolverSettings, ProbeSettings, the quantizer, the latency model, the model and its data). Every import of a
stage runs inside a function: building the parser imports no torch."""

from __future__ import annotations

from mpq.device import DEVICE_PATTERN
from mpq.errors import MpqError


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


def latency_arg(args):
    """The latency model the options name, or None; MpqError for both at once."""
    from mpq.cost.latency import latency_model

    device = args.latency_device or (args.device if args.device and not COMPUTE_DEVICE.match(args.device) else None)
    if device and args.latency_table:
        raise MpqError("give either --latency-device or --latency-table, not both")
    if args.latency_batch is not None and not (device or args.latency_table):
        raise MpqError("--latency-batch needs --latency-device or --latency-table")
    return latency_model(device or args.latency_table, args.latency_batch)


COMPUTE_DEVICE = DEVICE_PATTERN  # mpq.device reads it without importing torch


def compute_device(args):
    """The torch.device the model runs on (mpq.device.resolve_device): cpu (the default), cuda, cuda:N, or auto
    (cuda when a GPU is visible, else cpu); under torchrun with CUDA, this rank's cuda:LOCAL_RANK. A GPU that
    is not visible is refused in one line."""
    from mpq.device import resolve_device
    from mpq.sensitivity.distributed import local_device

    text = getattr(args, "device", None)
    if text is not None and not text.strip():
        raise MpqError("--device is empty: give cpu, cuda, cuda:N or auto (or leave it out for cpu)")
    text = text or "cpu"
    if not COMPUTE_DEVICE.match(text):
        if hasattr(args, "latency_device"):
            text = "cpu"  # mpq 0.1.0's --device NAME: a latency device, read by latency_arg
        else:
            raise MpqError(f"--device {text} is not a device to run on: use cpu, cuda, cuda:N or auto")
    return local_device(resolve_device(text, label="--device"))


def need_latency_model(budgets, latency) -> None:
    from mpq.cost.roofline import shipped_devices
    from mpq.solver.build import check_latency_budgets

    how = (
        f"pass --latency-device NAME ({', '.join(shipped_devices())}, or a .toml) or --latency-table FILE.csv "
        "(written by `mpq profile`)"
    )
    check_latency_budgets(budgets, latency, how)


def quantizer_arg(args, default_is_plan: bool):
    from mpq.quant.quantizer import resolve_quantizer

    parts = {
        "act_observer": args.act_observer,
        "weight_clip": args.weight_clip,
        "bias_correction": args.bias_correction,
        "rounding": args.rounding,
        "equalize": args.equalize,
        "group_size": getattr(args, "group_size", None),
    }
    if default_is_plan and args.quantizer is None and all(v is None for v in parts.values()):
        return None  # the plan's own
    return resolve_quantizer(args.quantizer, **parts)


def progress_arg(args) -> bool | None:
    """False for --quiet, True for --verbose, else None (only when stderr is a terminal)."""
    return False if args.quiet else True if args.verbose else None


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
