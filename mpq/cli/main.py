"""The `mpq` command: a thin layer over the Python API.

Exit status: 0 done; 2 bad input (one line `mpq: error: ...`); 3 no plan meets the budget.
"""

from __future__ import annotations

import os
import shlex
import sys

from mpq.cli.cache_command import run_cache
from mpq.cli.commands import run_export, run_pareto, run_profile, run_search, run_sensitivity, run_solve, run_verify
from mpq.cli.parser import build_parser
from mpq.cli.recipe import RECIPE_COMMANDS, expand_config, recipe_of
from mpq.errors import MpqError
from mpq.quiet import quiet_known_warnings


def _world_size() -> int:
    """torchrun's WORLD_SIZE (1 when unset); MpqError for one that is not a count, or without RANK."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise MpqError(f"WORLD_SIZE={text!r} is not a number of processes: start mpq with torchrun, or unset it")
    if int(text) > 1 and not os.environ.get("RANK", "").strip().isdigit():
        raise MpqError(f"WORLD_SIZE={text} is set but RANK is not: start mpq with torchrun, or unset WORLD_SIZE")
    return int(text)


def _join_ranks(args) -> None:
    """Under torchrun (WORLD_SIZE > 1), `mpq sensitivity` joins the process group (nccl with --device cuda,
    each rank on cuda:LOCAL_RANK; gloo on the CPU); other commands refuse."""
    if _world_size() > 1:
        if args.command != "sensitivity":
            raise MpqError(
                f"only `mpq sensitivity` runs under torchrun: run it there, then `mpq {args.command}` in one "
                "process with the same --cache-dir reuses its traces"
            )
        from mpq.cli.translate import compute_device
        from mpq.sensitivity.distributed import join_from_environment

        join_from_environment(compute_device(args))


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if not any(a.startswith("--verb") for a in argv):
            quiet_known_warnings()  # torch's and torchao's import-time lines (mpq.quiet)
        parser = build_parser()
        args = parser.parse_args(expand_config(parser, argv))
        args.command_line = "mpq " + shlex.join(argv)  # for report.md's summary
        args.recipe = recipe_of(parser, args) if args.command in RECIPE_COMMANDS else None  # what plan.json records
        handler = {
            "search": run_search,
            "pareto": run_pareto,
            "solve": run_solve,
            "sensitivity": run_sensitivity,
            "verify": run_verify,
            "export": run_export,
            "profile": run_profile,
            "cache": run_cache,
        }[args.command]
        _join_ranks(args)
        return handler(args)
    except MpqError as exc:
        print(f"mpq: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(
            (
                "mpq: interrupted; finished Hessian probes are kept in the cache (unless --no-cache) and the same "
                "command resumes from them"
            ),
            file=sys.stderr,
        )
        return 130
    finally:
        distributed = sys.modules.get("mpq.sensitivity.distributed")
        if distributed is not None:
            distributed.leave()  # nothing when no process group was joined


if __name__ == "__main__":
    sys.exit(main())
