"""The `mpq` subcommands: each reads its parsed options, calls the Python API and prints the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mpq.cli.paths import created, writable_folder
from mpq.cli.translate import (
    analyze_options,
    compute_device,
    eval_data_arg,
    latency_arg,
    load_inputs,
    need_latency_model,
    pins_arg,
    progress_arg,
    quantizer_arg,
    search_space,
    solver_settings,
)
from mpq.errors import MpqError
from mpq.files import check_replaceable

PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".eps", ".ps", ".webp")


def _print_json(**content) -> None:
    """`--json`: the command's results as one JSON object on stdout (docs/cli.md, "--json")."""
    print(json.dumps(content, indent=1))


def run_search(args) -> int:
    import mpq
    from mpq.cost.budget import parse_budget
    from mpq.report.markdown import write_outputs
    from mpq.report.tables import comparison_table, latency_line, layer_table

    budgets = [parse_budget(b) for b in args.budget]
    latency = latency_arg(args)
    need_latency_model(budgets, latency)
    out = writable_folder(args.out)
    model, data = load_inputs(args)
    space = search_space(args)
    result = mpq.search(
        model,
        data,
        budgets,
        space=space,
        solver=solver_settings(args),
        latency=latency,
        quantizer=quantizer_arg(args, False),
        proxy_plans=args.proxy_check,
        eval_batch_size=args.eval_batch_size,
        eval_data=eval_data_arg(args, model),
        eval_split=args.eval_split,
        target=args.target,
        gguf_metadata=args.gguf_metadata,
        **analyze_options(args),
    )
    result.plan.recipe = getattr(args, "recipe", None)  # `mpq search --config plan.json` repeats this run
    paths = write_outputs(
        out, result.sensitivity, result.plan, result.report, command=getattr(args, "command_line", None)
    )
    if args.json:
        _print_json(plan=result.plan.to_json(), report=result.report.to_json(), files=[str(p) for p in paths])
        return 0
    print(layer_table(result.sensitivity, result.plan))
    print()
    print(comparison_table(result.report))
    print()
    if latency is not None:
        print(latency_line(result.plan))
        if result.plan.settings.latency.note:
            print(f"note: {result.plan.settings.latency.note}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_pareto(args) -> int:
    import mpq
    from mpq.cost.budget import parse_budget
    from mpq.report.pareto_files import pareto_table, write_pareto
    from mpq.solver.sweep import parse_sweep

    budgets = parse_sweep(args.budget)
    fixed = [parse_budget(b) for b in args.also_budget]
    out = writable_folder(args.out)
    model, data = load_inputs(args)
    space = search_space(args)
    result = mpq.pareto(
        model,
        data,
        budgets,
        also_budgets=fixed,
        space=space,
        solver=solver_settings(args),
        verify_points=args.verify_points,
        eval_batch_size=args.eval_batch_size,
        quantizer=quantizer_arg(args, False),
        eval_data=eval_data_arg(args, model),
        eval_split=args.eval_split,
        **analyze_options(args),
    )
    paths = write_pareto(out, result)
    if args.json:
        _print_json(pareto=result.to_json(), files=[str(p) for p in paths])
        return 0
    print(pareto_table(result))
    print()
    print(
        f"solved {len(result.points)} points in {result.timings_s['solve']:.1f} s; wrote "
        + ", ".join(str(p) for p in paths)
    )
    return 0


def run_solve(args) -> int:
    from mpq.cost.budget import parse_budget
    from mpq.report.tables import solution_table
    from mpq.solver.pins import resolve_keep
    from mpq.solver.problem import solve_problem
    from mpq.solver.table import plan_from_solution, read_table

    budgets = [parse_budget(b) for b in args.budget]
    pins = pins_arg(args)
    out = writable_folder(args.out)
    problem = read_table(args.table, budgets)
    problem.keep = resolve_keep(problem.layers, **pins)
    solver = solver_settings(args)
    solution = solve_problem(problem, solver.time_limit_s, solver.name)
    plan = plan_from_solution(args.table, problem, solution)
    plan.save(created(out) / "plan.json")
    if args.json:
        _print_json(plan=plan.to_json(), files=[str(out / "plan.json")])
        return 0
    print(solution_table(problem, solution))
    print()
    print(f"wrote {out / 'plan.json'}")
    return 0


def run_sensitivity(args) -> int:
    import mpq
    from mpq.report.plots import plot_sensitivity
    from mpq.report.tables import layer_table
    from mpq.sensitivity.distributed import Ranks

    plot = None if args.no_plot else Path(args.plot)
    if plot is not None:
        if plot.suffix.lower() not in PLOT_SUFFIXES:  # matplotlib picks the format by it
            raise MpqError(f"--plot {plot}: give a file name ending in {', '.join(PLOT_SUFFIXES[:3])} (or --no-plot)")
        writable_folder(str(plot.parent))
        check_replaceable(plot)
    model, data = load_inputs(args)
    sensitivity = mpq.analyze(model, data, activations=args.activations, **analyze_options(args))
    if not Ranks.current().is_main:
        return 0  # under torchrun, rank 0 prints and plots
    if plot is not None:
        created(plot.parent)
        plot_sensitivity(sensitivity, plot)
    if args.json:
        print(json.dumps(sensitivity.to_json(), indent=1))
    else:
        print(f"metric: {sensitivity.metric}; loss: {sensitivity.loss}")
        print(layer_table(sensitivity))
    if plot is not None:
        print(f"wrote {plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_verify(args) -> int:
    import mpq
    from mpq.files import write_json_atomic
    from mpq.report.tables import comparison_table

    plan = mpq.Plan.load(args.plan)
    out = writable_folder(args.out)
    model, data = load_inputs(args)
    report = mpq.verify(
        model,
        plan,
        data,
        batch_size=args.eval_batch_size,
        cache_dir=False if args.no_cache else args.cache_dir,
        latency=latency_arg(args),
        quantizer=quantizer_arg(args, True),
        progress=progress_arg(args),
        eval_data=eval_data_arg(args, model),
        eval_split=args.eval_split,
    )
    write_json_atomic(created(out) / "report.json", report.to_json())
    if args.json:
        _print_json(report=report.to_json(), files=[str(out / "report.json")])
        return 0
    print(comparison_table(report))
    print(f"\nwrote {out / 'report.json'}")
    return 0


def run_profile(args) -> int:
    import torch

    from mpq.cost.profile import profile_prepared, write_profile
    from mpq.inputs.prepare import as_prepared

    for name in ("batch", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise MpqError(f"--{name} must be 1 or more")
    if args.warmup < 0:
        raise MpqError("--warmup must be 0 or more")
    if (args.device or "").startswith("cuda"):
        compute_device(args)  # a GPU that is not visible is refused as by every command
        raise MpqError(
            f"--device {args.device}: mpq profile times the CPU's kernels (int8 and int4 CPU backends, "
            "--threads); run it with --device cpu"
        )
    args.device = "cpu"  # auto too: the CPU is what it times
    check_replaceable(args.out)
    model, data = load_inputs(args)
    prepared = as_prepared(model, data)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = profile_prepared(prepared, args.batch, args.repeats, args.warmup, example=data.x[:1])
    finally:
        torch.set_num_threads(threads)
    command = f"mpq profile --batch {args.batch} --repeats {args.repeats} --warmup {args.warmup}" + (
        f" --threads {args.threads}" if args.threads else ""
    )
    write_profile(result, args.out, command)
    if args.json:
        _print_json(profile=result.to_json(), files=[args.out])
        return 0
    print(result.summary())
    print(f"\nwrote {args.out}")
    return 0


def run_export(args) -> int:
    import mpq

    plan = mpq.Plan.load(args.plan)
    check_replaceable(args.out)
    model, data = load_inputs(args)
    cache_dir = False if args.no_cache else args.cache_dir
    result = mpq.export_plan(
        model,
        plan,
        data,
        args.out,
        format=args.format,
        batch_size=args.batch_size,
        cache_dir=cache_dir,
        quantizer=quantizer_arg(args, True),
        eval_split=args.eval_split,
        gguf_metadata=args.gguf_metadata,
    )
    if args.json:
        written = {
            "format": result.format,
            "path": str(result.path),
            "file_bytes": result.file_bytes,
            "counted_bytes": result.counted_bytes,
            "notes": list(result.notes),
        }
        _print_json(export=written, files=[str(result.path)])
        return 0
    print(result.summary())
    return 0
