"""The `mpq` command: a thin layer over the Python API.

Exit status: 0 done; 2 bad input (one line `mpq: error: ...`); 3 no plan meets the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mpq.errors import MpqError

DEFAULT_OUT = "mpq-out"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise MpqError(f"{message} (see `{self.prog} --help`)")


def _widths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths such as 4,6,8") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one width, e.g. 4,8")
    from mpq.quant import check_bits

    for v in values:
        try:
            check_bits(v)
        except MpqError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return values


def _act_bits(text: str) -> tuple[int | None, ...]:
    widths = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        if item.lower() in ("none", "float", "off", "0"):
            widths.append(None)
            continue
        try:
            widths.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths such as 4,8, or 'none'") from None
    if not widths:
        raise argparse.ArgumentTypeError("give at least one activation width, e.g. 8 or 4,8, or 'none'")
    return tuple(widths)


def _add_pin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="append", default=[], metavar="NAME=BITS", help="keep layer NAME at BITS weight bits, e.g. fc=8; repeatable")
    p.add_argument("--keep-first", type=int, metavar="BITS", help="keep the first quantizable layer (execution order) at BITS weight bits")
    p.add_argument("--keep-last", type=int, metavar="BITS", help="keep the last quantizable layer (execution order) at BITS weight bits")


def _pins(args) -> dict:
    from mpq.pins import parse_keep

    keep: dict[str, int] = {}
    for text in args.keep:
        name, bits = parse_keep(text)
        if keep.get(name, bits) != bits:
            raise MpqError(f"layer {name} is kept at both {keep[name]} and {bits} bits; keep it at one width")
        keep[name] = bits
    return {"keep": keep, "keep_first": args.keep_first, "keep_last": args.keep_last}


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on or off")


def _add_quantizer_options(p: argparse.ArgumentParser, default_is_plan: bool) -> None:
    from mpq.observers import ACT_OBSERVERS, WEIGHT_CLIPS
    from mpq.quantizer import PRESETS

    base = "the plan's quantizer" if default_is_plan else "the default preset"
    p.add_argument("--quantizer", choices=tuple(PRESETS), help=f"quantizer preset (default: {base}); the three options below override its parts")
    p.add_argument("--act-observer", choices=tuple(ACT_OBSERVERS), help="activation ranges: min-max, percentile 99.99%%, histogram MSE-optimal, or ACIQ (Laplace)")
    p.add_argument("--weight-clip", choices=tuple(WEIGHT_CLIPS), help="weight scales per channel: min-max, or the clip ratio of least squared error")
    p.add_argument("--bias-correction", type=_on_off, metavar="on|off", help="correct each layer's bias for the mean output shift its weight quantization causes")


def _quantizer(args, default_is_plan: bool):
    from mpq.quantizer import resolve_quantizer

    parts = {"act_observer": args.act_observer, "weight_clip": args.weight_clip, "bias_correction": args.bias_correction}
    if default_is_plan and args.quantizer is None and all(v is None for v in parts.values()):
        return None  # the plan's own
    return resolve_quantizer(args.quantizer, **parts)


def _add_model_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="package.module:attr or path/file.py:attr (an nn.Module or a function returning one), or a torch.export .pt2 file; default: built-in EfficientNet-Lite0")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="keyword argument for the model function (int/float/bool/str); repeatable")
    p.add_argument("--weights", help="state dict (.pth) to load into the model, read with weights_only=True")
    p.add_argument("--data", help=".npz/.pt with x (and integer labels y), a folder of images, or module:function returning a Dataset, tensor or DataLoader; default: the built-in 200 ImageNet views")
    p.add_argument("--transform", choices=("imagenet", "none"), default="imagenet", help="for image folders: imagenet = resize 256 bicubic, centre crop 224, (x-127)/128; none = x/255 as is (default imagenet)")


def _add_probe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tol", type=float, default=0.05, help="stop probing when every layer's stderr is below this fraction of its trace (default 0.05)")
    p.add_argument("--max-probes", type=int, default=32, help="most Hutchinson probes (default 32)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="most seconds of probing (default 600)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per Hessian-vector product (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0); the same seed gives the same plan")
    p.add_argument("--loss", help="labels (cross-entropy with y; default with labels), fp32 (cross-entropy to FP32 predictions; default without), mse or kl (to FP32 outputs), or module:callable loss(output, target)")
    p.add_argument("--quantize-embeddings", action="store_true", help="quantize nn.Embedding tables too (per row; their integer inputs stay as they are)")
    p.add_argument("--cache-dir", help="where sensitivities and measurements are cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpq", description="Mixed-precision quantization search and sensitivity analysis for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    search = sub.add_parser("search", help="find the widths of every layer within a budget, verify and report them")
    _add_model_data(search)
    search.add_argument("--budget", action="append", required=True, help="4MB, 3.5MiB, 500KB, 20GBOPs ...; repeat for several (all must hold)")
    search.add_argument("--bits", type=_widths, default=(4, 5, 6, 7, 8), help="candidate weight widths (default 4,5,6,7,8)")
    search.add_argument("--act-bits", type=_act_bits, default=(8,), help="candidate activation widths, e.g. 4,8, or 'none' to keep activations in float (default 8); chosen by cost only")
    search.add_argument("--trace-margin", type=float, default=2.0, help="Omega uses trace + this many standard errors (default 2; 0 = plain HAWQ-V2)")
    search.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    search.add_argument("--eval-batch-size", type=int, default=25, help="samples per evaluation batch (default 25)")
    _add_quantizer_options(search, default_is_plan=False)
    _add_pin_options(search)
    _add_probe_options(search)

    solve = sub.add_parser("solve", help="solve a bit-allocation problem given as a CSV table and write plan.json")
    solve.add_argument("--table", required=True, help="CSV: layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s[,group]; one row per layer and choice")
    solve.add_argument("--budget", action="append", required=True, help="4MB, 123456B, 20GBOPs, 2.5ms, 800us ...; repeat for several (all must hold)")
    solve.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    _add_pin_options(solve)

    sens = sub.add_parser("sensitivity", help="per-layer Hessian traces with standard errors")
    _add_model_data(sens)
    sens.add_argument("--json", action="store_true", help="print the mpq.sensitivity/1 JSON instead of a table")
    _add_probe_options(sens)

    check = sub.add_parser("verify", help="measure a saved plan on a model and data; writes report.json")
    check.add_argument("plan", help="plan.json written by `mpq search`")
    _add_model_data(check)
    check.add_argument("--out", default=DEFAULT_OUT, help=f"output folder for report.json (default {DEFAULT_OUT}/)")
    check.add_argument("--eval-batch-size", type=int, default=25, help="samples per evaluation batch (default 25)")
    check.add_argument("--cache-dir", help="where measurements are cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)")
    check.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    _add_quantizer_options(check, default_is_plan=True)

    export = sub.add_parser("export", help="write a plan applied to its model: packed weights, ONNX QDQ or a torchao config")
    export.add_argument("plan", help="plan.json written by `mpq search`")
    export.add_argument("--format", choices=("packed", "onnx", "torchao"), default="packed", help="packed (one file of bit-packed weights), onnx (QDQ) or torchao (FqnToConfig JSON); default packed")
    export.add_argument("--out", required=True, help="the file to write")
    _add_model_data(export)
    export.add_argument("--batch-size", type=int, default=25, help="samples per calibration batch (default 25)")
    export.add_argument("--cache-dir", help="where the FP32 calibration is cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)")
    export.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    _add_quantizer_options(export, default_is_plan=True)
    return parser


def _load_inputs(args):
    from mpq.models import DEFAULT_DATA_SPEC, DEFAULT_MODEL_SPEC
    from mpq.specs import load_data_spec, load_model_spec, parse_model_args

    if args.model and not args.data:
        raise MpqError("--model needs --data too (the built-in data suits only the built-in model)")
    if not args.model and (args.model_arg or args.weights):
        raise MpqError("--model-arg and --weights apply to your own --model; add --model")
    model = load_model_spec(args.model or DEFAULT_MODEL_SPEC, parse_model_args(args.model_arg), args.weights)
    data = load_data_spec(args.data or DEFAULT_DATA_SPEC, args.transform)
    return model, data


def _analyze_options(args) -> dict:
    return {
        "tol": args.tol,
        "max_probes": args.max_probes,
        "max_seconds": args.max_seconds,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "cache_dir": False if args.no_cache else args.cache_dir,
        "progress": not args.quiet,
        "loss": args.loss,
        "quantize_embeddings": args.quantize_embeddings,
    }


def _writable_folder(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MpqError(f"cannot create output folder {out}: {exc.strerror}; choose another with --out") from None
    if not os.access(out, os.W_OK):
        raise MpqError(f"output folder {out} is not writable; choose another with --out")
    return out


def run_search(args) -> int:
    import mpq
    from mpq.budget import parse_budget
    from mpq.report import comparison_table, layer_table, write_outputs

    budgets = [parse_budget(b) for b in args.budget]
    out = _writable_folder(args.out)
    model, data = _load_inputs(args)
    pins = _pins(args)
    result = mpq.search(model, data, budgets, bits=args.bits, act_bits=args.act_bits, trace_margin=args.trace_margin, eval_batch_size=args.eval_batch_size, quantizer=_quantizer(args, False), **pins, **_analyze_options(args))
    paths = write_outputs(out, result.sensitivity, result.plan, result.report)
    print(layer_table(result.sensitivity, result.plan))
    print()
    print(comparison_table(result.report))
    print()
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_solve(args) -> int:
    from mpq.budget import parse_budget
    from mpq.pins import resolve_keep
    from mpq.report import solution_table
    from mpq.solver import solve_problem
    from mpq.table import plan_from_solution, read_table

    budgets = [parse_budget(b) for b in args.budget]
    pins = _pins(args)
    out = _writable_folder(args.out)
    problem = read_table(args.table, budgets)
    problem.keep = resolve_keep(problem.layers, **pins)
    solution = solve_problem(problem)
    plan_from_solution(args.table, problem, solution).save(out / "plan.json")
    print(solution_table(problem, solution))
    print()
    print(f"wrote {out / 'plan.json'}")
    return 0


def run_sensitivity(args) -> int:
    import mpq
    from mpq.report import layer_table

    model, data = _load_inputs(args)
    sensitivity = mpq.analyze(model, data, **_analyze_options(args))
    if args.json:
        print(json.dumps(sensitivity.to_json(), indent=1))
    else:
        print(f"loss: {sensitivity.loss}")
        print(layer_table(sensitivity))
    return 0


def run_verify(args) -> int:
    import mpq
    from mpq.files import write_json_atomic
    from mpq.report import comparison_table

    plan = mpq.Plan.load(args.plan)
    out = _writable_folder(args.out)
    model, data = _load_inputs(args)
    report = mpq.verify(model, plan, data, batch_size=args.eval_batch_size, cache_dir=False if args.no_cache else args.cache_dir, quantizer=_quantizer(args, True))
    write_json_atomic(out / "report.json", report.to_json())
    print(comparison_table(report))
    print(f"\nwrote {out / 'report.json'}")
    return 0


def run_export(args) -> int:
    import mpq

    plan = mpq.Plan.load(args.plan)
    model, data = _load_inputs(args)
    cache_dir = False if args.no_cache else args.cache_dir
    result = mpq.export_plan(model, plan, data, args.out, format=args.format, batch_size=args.batch_size, cache_dir=cache_dir, quantizer=_quantizer(args, True))
    print(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler = {"search": run_search, "solve": run_solve, "sensitivity": run_sensitivity, "verify": run_verify, "export": run_export}[args.command]
        return handler(args)
    except MpqError as exc:
        print(f"mpq: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("mpq: interrupted; finished Hessian probes are kept in the cache (unless --no-cache) and the same command resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
