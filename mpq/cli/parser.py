"""The `mpq` command line: the parser and its subcommands (their options: mpq.cli.options; the options as
the API's settings: mpq.cli.translate; output folders: mpq.cli.paths)."""

from __future__ import annotations

import argparse

from mpq.cli.cache_command import add_cache_parser
from mpq.cli.examples import BUDGET, EXAMPLES, GROUPS, MODEL, OUTPUT, PROBING, PROBLEM, SWEEP, TIMING, TOP
from mpq.cli.options import (
    DEFAULT_OUT,
    DEFAULT_SENSITIVITY_PLOT,
    add_config,
    add_eval_data,
    add_json,
    add_latency_options,
    add_model_data,
    add_pin_options,
    add_probe_options,
    add_progress_options,
    add_quantizer_options,
    add_search_options,
    add_solver_options,
    group,
)
from mpq.cli.translate import progress_arg  # noqa: F401  (tests/test_progress.py reads it from here)
from mpq.cli.types import count, fraction, positive, verify_points_type
from mpq.errors import MpqError
from mpq.inputs.split import EVAL_SPLIT


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
        group(p, title)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mpq",
        description="Mixed-precision quantization search and sensitivity analysis for PyTorch.",
        epilog=TOP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print mpq's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _search_command(sub)
    _pareto_command(sub)
    _solve_command(sub)
    _sensitivity_command(sub)
    _verify_command(sub)
    _profile_command(sub)
    _export_command(sub)
    add_cache_parser(sub)
    return parser


def _search_command(sub) -> None:
    search = _command(sub, "search", "find the widths of every layer within a budget, verify and report them")
    add_model_data(search)
    add_config(search)
    add_eval_data(search)
    group(search, BUDGET).add_argument(
        "--budget",
        action="append",
        required=True,
        help=(
            "4MB, 3.5MiB, 500KB, 20GBOPs, 2.5ms (with --device or --latency-table), 4.25bpw (bits per quantized "
            "weight, scales included) ...; repeat for several (all must hold)"
        ),
    )
    add_search_options(search)
    _target_options(search)
    group(search, BUDGET).add_argument(
        "--no-act-sensitivity",
        dest="act_sensitivity",
        action="store_const",
        const=False,
        default=None,
        help=(
            "with several --act-bits, choose them by cost only (the widest the budgets allow), not by the inputs' "
            "sensitivity"
        ),
    )
    group(search, BUDGET).add_argument(
        "--granularity",
        choices=("layer", "channel"),
        default="layer",
        help="one weight width per layer (default), or per group of output channels (see --channel-group)",
    )
    group(search, BUDGET).add_argument(
        "--proxy-check",
        type=count,
        default=0,
        metavar="N",
        help=(
            "also measure N random plans at the same size budget and report how well Omega ranks them (Spearman "
            "rho of Omega and KL; N >= 2; default 0: off)"
        ),
    )
    group(search, BUDGET).add_argument(
        "--channel-group",
        type=int,
        default=1,
        metavar="N",
        help="with --granularity channel: N consecutive output channels share one width (default 1)",
    )
    add_latency_options(search)
    add_json(search, '{"plan": plan.json, "report": report.json, "files": [...]}')


def _pareto_command(sub) -> None:
    sweep = _command(
        sub, "pareto", "the least-Omega plan at each budget of a range, some measured, against uniform widths"
    )
    add_model_data(sweep)
    add_config(sweep)
    add_eval_data(sweep)
    group(sweep, SWEEP).add_argument(
        "--budget",
        required=True,
        help=(
            "a range LOW:HIGH[:STEPS] (default 30 steps), e.g. 2MB:6MB, 10GBOPs:40GBOPs:20 or 3bpw:6bpw, or a list "
            "2MB,3MB,4MB (sizes, BOPs or bits per weight)"
        ),
    )
    group(sweep, SWEEP).add_argument(
        "--also-budget",
        action="append",
        default=[],
        help="a budget that holds at every point, e.g. 20GBOPs while sweeping sizes; repeatable",
    )
    group(sweep, SWEEP).add_argument(
        "--verify-points",
        type=verify_points_type,
        default=6,
        help="how many feasible points to measure, evenly spread (ends included), 'all', or 0 (default 6)",
    )
    add_search_options(sweep)
    add_json(sweep, "pareto.json's content")


def _solve_command(sub) -> None:
    solve = _command(sub, "solve", "solve a bit-allocation problem given as a CSV table and write plan.json")
    group(solve, PROBLEM).add_argument(
        "--table",
        required=True,
        help="CSV: layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s[,group]; one row per layer and choice",
    )
    group(solve, PROBLEM).add_argument(
        "--budget",
        action="append",
        required=True,
        help="4MB, 123456B, 20GBOPs, 2.5ms, 800us ...; repeat for several (all must hold)",
    )
    group(solve, OUTPUT).add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    add_pin_options(solve)
    add_solver_options(solve)
    add_json(solve, "plan.json's content")


def _sensitivity_command(sub) -> None:
    sens = _command(sub, "sensitivity", "per-layer sensitivities (by default kl_anchored) with standard errors")
    add_model_data(sens)
    group(sens, OUTPUT).add_argument(
        "--json", action="store_true", help="print the mpq.sensitivity/1 JSON instead of a table"
    )
    group(sens, PROBING).add_argument(
        "--activations",
        action="store_true",
        help="also the sensitivity of every layer's input (what chooses --act-bits in mpq search)",
    )
    group(sens, OUTPUT).add_argument(
        "--plot",
        default=DEFAULT_SENSITIVITY_PLOT,
        metavar="FILE.png",
        help=f"bar chart of the per-layer sensitivities with error bars (default {DEFAULT_SENSITIVITY_PLOT})",
    )
    group(sens, OUTPUT).add_argument("--no-plot", action="store_true", help="write no chart")
    add_probe_options(sens)


def _verify_command(sub) -> None:
    check = _command(sub, "verify", "measure a saved plan on a model and data; writes report.json")
    check.add_argument("plan", help="plan.json written by `mpq search`")
    add_model_data(check)
    add_eval_data(check)
    group(check, OUTPUT).add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder for report.json (default {DEFAULT_OUT}/)"
    )
    group(check, OUTPUT).add_argument(
        "--eval-batch-size", type=positive, default=25, help="samples per evaluation batch (default 25)"
    )
    group(check, OUTPUT).add_argument(
        "--cache-dir", help="where measurements are cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)"
    )
    group(check, OUTPUT).add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_progress_options(check)
    add_latency_options(check)
    add_json(check, "report.json's content")
    add_quantizer_options(check, default_is_plan=True)


def _profile_command(sub) -> None:
    profile = _command(
        sub,
        "profile",
        "measure each layer's latency on this machine, for the widths it runs natively; writes a latency table",
    )
    add_model_data(profile)
    group(profile, OUTPUT).add_argument(
        "--out", required=True, help="the CSV latency table to write (for --latency-table)"
    )
    group(profile, TIMING).add_argument("--batch", type=positive, default=1, help="samples per timed call (default 1)")
    group(profile, TIMING).add_argument(
        "--repeats", type=positive, default=25, help="timed calls per layer and width; the median is kept (default 25)"
    )
    group(profile, TIMING).add_argument("--warmup", type=count, default=5, help="untimed calls before them (default 5)")
    group(profile, TIMING).add_argument(
        "--threads", type=positive, help="torch threads while timing (default: torch's own choice)"
    )
    add_progress_options(profile)
    add_json(profile, "the latency table's rows")


GGUF_METADATA_HELP = "a GGUF file of the same model whose tokenizer metadata (tokenizer.*) the GGUF file copies"


def _target_options(search) -> None:
    group(search, BUDGET).add_argument(
        "--target",
        choices=("packed", "gguf", "compressed-tensors"),
        default="packed",
        help=(
            "the file the plan is made for and the budget counts: packed (mpq's own, default), gguf (llama.cpp: "
            "candidates are GGUF types, 2: Q2_K 3: Q3_K 4: Q4_K 5: Q5_K 6: Q6_K 8: Q8_0, weight-only; the size "
            "is the .gguf file's, written by `mpq export --format gguf`) or compressed-tensors (transformers, "
            "vLLM: symmetric int 2-8 bits, bf16 scales per channel or per --group-size, weight-only, q/k/v and "
            "gate/up one scheme; the size is model.safetensors', written by `mpq export --format compressed-tensors`)"
        ),
    )
    group(search, BUDGET).add_argument(
        "--gguf-metadata",
        metavar="FILE.gguf",
        help=GGUF_METADATA_HELP + " (recorded in the plan; default: built from the hf: folder's tokenizer)",
    )


def _export_command(sub) -> None:
    export = _command(sub, "export", "write a plan applied to its model: packed weights, ONNX QDQ or a torchao config")
    export.add_argument("plan", help="plan.json written by `mpq search`")
    group(export, OUTPUT).add_argument(
        "--format",
        choices=("packed", "onnx", "torchao", "gguf", "compressed-tensors"),
        default="packed",
        help=(
            "packed (one file of bit-packed weights), onnx (QDQ), torchao (FqnToConfig JSON), gguf (llama.cpp, "
            "a plan searched with --target gguf) or compressed-tensors (a save_pretrained folder --out DIR, a plan "
            "searched with --target compressed-tensors); default packed"
        ),
    )
    group(export, OUTPUT).add_argument(
        "--gguf-metadata",
        metavar="FILE.gguf",
        help=GGUF_METADATA_HELP + " (default: the plan's, else built from the hf: folder's tokenizer)",
    )
    group(export, OUTPUT).add_argument(
        "--out", required=True, help="the file to write (compressed-tensors: the folder)"
    )
    add_model_data(export)
    group(export, MODEL).add_argument(
        "--batch-size", type=positive, default=25, help="samples per calibration batch (default 25)"
    )
    group(export, MODEL).add_argument(
        "--eval-split",
        type=fraction,
        default=EVAL_SPLIT,
        help=(
            "calibrate, as `mpq search` and `mpq verify` did, on --data less this share they hold out for "
            f"measurement (whole groups, seed 0); 0 calibrates on all of --data (default {EVAL_SPLIT})"
        ),
    )
    group(export, OUTPUT).add_argument(
        "--cache-dir", help="where the FP32 calibration is cached (default ~/.cache/mpq or $MPQ_CACHE_DIR)"
    )
    group(export, OUTPUT).add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_progress_options(export)
    add_quantizer_options(export, default_is_plan=True)
    add_json(export, "what was written (file, format, bytes)")
