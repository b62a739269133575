"""Command-line habits (issue 15): a fast `mpq --help` (no torch to build the parser), the lazy public
names and `mpq.verify` (function and subpackage), `mpq --version`, versions in plan.json and
report.json, `--json`, `mpq.quantize_`, and report.md's summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mpq

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_parser_is_built_without_torch():
    code = "import sys, mpq.cli.main; from mpq.cli.parser import build_parser; build_parser(); print('torch' in sys.modules, 'numpy' in sys.modules)"
    assert python(code) == "False False"


def test_import_mpq_imports_no_torch_until_a_name_is_used():
    assert (
        python("import sys, mpq; print('torch' in sys.modules); mpq.Plan; print('torch' in sys.modules)")
        == "False\nFalse"
    )
    assert python("import sys, mpq; mpq.search; print('torch' in sys.modules)") == "True"


def test_help_exits_0_without_torch():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mpq.cli", "search", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--budget" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "mpq.cli.parser" in imported and "torch" not in imported


def test_every_public_name_resolves_and_is_listed():
    for name in mpq.__all__:
        assert getattr(mpq, name) is not None, name
    assert set(mpq.__all__) <= set(dir(mpq))
    try:
        mpq.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("mpq.no_such_name resolved")


def test_mpq_verify_stays_the_function_after_its_subpackage_is_imported():
    import mpq.verify.measure  # Python binds the subpackage to mpq.verify here
    from mpq.api.verbs import verify

    assert mpq.verify is verify and callable(mpq.verify)
    assert mpq.verify.__doc__ == verify.__doc__ and mpq.verify.__doc__.startswith("Apply `plan` with fake quantization")
    assert sys.modules["mpq.verify"].__name__ == "mpq.verify"  # the subpackage is still importable
    from mpq.verify import measure

    assert measure is sys.modules["mpq.verify.measure"]


def test_mpq_verify_is_the_function_in_a_fresh_process_whatever_is_imported_first():
    code = "import mpq.verify.measure, mpq, mpq.verify.apply; from mpq import verify; print(mpq.verify is verify, mpq.verify.__name__, mpq.verify.__module__)"
    assert python(code) == "True verify mpq.api.verbs"


def test_the_quantizer_names_match_the_observers():
    from mpq.quant.observers import ACT_OBSERVERS, WEIGHT_CLIPS
    from mpq.quant.quantizer import ACT_OBSERVER_NAMES, WEIGHT_CLIP_NAMES

    assert tuple(ACT_OBSERVERS) == ACT_OBSERVER_NAMES and tuple(WEIGHT_CLIPS) == WEIGHT_CLIP_NAMES


def test_quantize_returns_the_evaluators_model_and_leaves_the_input_as_it_was(tiny_model, tiny_data, tmp_path):
    import torch

    from mpq.cache import Cache
    from mpq.inputs.prepare import as_dataset, as_prepared
    from mpq.plan import LayerPlan, Plan
    from mpq.quant.reference import fp32_reference
    from mpq.verify.measure import pack_plan, packed_logits, plan_calibration

    x, y = tiny_data
    plan = Plan(
        layers={
            "conv1": LayerPlan(weight_bits=4, act_bits=8),
            "conv2": LayerPlan(weight_bits=6, act_bits=8),
            "fc": LayerPlan(weight_bits=3, act_bits=None),
        }
    )
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    quantized = mpq.quantize_(
        tiny_model, plan, (x, y), batch_size=8, cache_dir=False, eval_split=0
    )  # calibrated on all of the data, as below

    data = as_dataset((x, y))
    prepared = as_prepared(tiny_model, data)
    calibration = plan_calibration(prepared, plan, data, fp32_reference(prepared, data, 8, Cache(None)), 8, Cache(None))
    expected = packed_logits(prepared, pack_plan(prepared, plan, calibration), data, 8)
    with torch.inference_mode():
        got = torch.cat([quantized(x[i : i + 8]) for i in range(0, len(x), 8)]).float()
    assert torch.equal(got, expected)
    assert not torch.equal(got, tiny_model(x).detach())  # it is quantized
    assert quantized is not tiny_model and not quantized.training
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())  # the input model is unchanged
    assert isinstance(tiny_model.bn1, torch.nn.BatchNorm2d) and tiny_model.conv1.weight.dtype == torch.float32


def test_version_prints_the_package_version_and_exits_0():
    from mpq.versions import mpq_version, pyproject_version

    done = subprocess.run(
        [sys.executable, "-m", "mpq.cli", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout == f"mpq {mpq_version()}\n"
    assert pyproject_version() == pyproject_version(ROOT / "pyproject.toml") != "unknown"
    assert mpq_version() == pyproject_version()  # installed or not, this checkout's version


def test_pyproject_version_reads_the_project_table(tmp_path):
    from mpq.versions import pyproject_version

    toml = tmp_path / "pyproject.toml"
    toml.write_text(
        '[tool.other]\nversion = "9.9"\n\n[project]\nname = "mpq"\nversion = "1.2.3"\n\n[tool.x]\nversion = "0"\n'
    )
    assert pyproject_version(toml) == "1.2.3"
    assert pyproject_version(tmp_path / "missing.toml") == "unknown"


def test_plan_json_keeps_the_versions_and_solve_plans_are_byte_identical(tmp_path, capsys):
    from helpers import run_cli

    from mpq.versions import versions

    table = tmp_path / "problem.csv"
    table.write_text(
        "layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s\n"
        "a,4,8,3.0,100,1,0\na,8,8,1.0,200,2,0\nb,4,8,2.0,100,1,0\nb,8,8,0.5,200,2,0\n"
    )
    plans = []
    for run in ("one", "two"):
        status, out, err = run_cli(capsys, "solve", "--table", table, "--budget", "300B", "--out", tmp_path / run)
        assert status == 0, err
        plans.append((tmp_path / run / "plan.json").read_bytes())
    assert plans[0] == plans[1]
    import json

    data = json.loads(plans[0])
    assert data["versions"] == versions() and set(data["versions"]) == {"mpq", "torch", "numpy", "pulp", "highspy"}
    plan = mpq.Plan.load(tmp_path / "one" / "plan.json")
    assert plan.versions == versions()
    old = dict(data, versions={"mpq": "0.0.9", "torch": "2.2.0", "numpy": "1.26.4", "pulp": "2.8.0", "highspy": None})
    (tmp_path / "old.json").write_text(json.dumps(old))
    again = mpq.Plan.load(tmp_path / "old.json")
    assert again.versions == old["versions"] and again.to_json() == old  # read back and written again as it was
    del old["versions"]
    assert mpq.Plan.from_json(old).versions == {} and "versions" not in mpq.Plan.from_json(old).to_json()
    try:
        mpq.Plan.from_json(dict(old, versions=["torch"]))
    except mpq.MpqError as exc:
        assert "malformed" in str(exc)
    else:
        raise AssertionError("a list of versions was accepted")


MLP_FAST = ("--max-probes", "3", "--quiet", "--no-cache")


def mlp_search(tmp_path, capsys, *extra):
    from tests.helpers import USER_MODELS, mlp_data, run_cli

    data = mlp_data(tmp_path / "d.npz")
    out = tmp_path / "out"
    args = (
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--budget",
        "300B",
        "--bits",
        "2,4,8",
        "--out",
        out,
        *MLP_FAST,
        *extra,
    )
    status, stdout, err = run_cli(capsys, *args)
    assert status == 0, err
    return out, stdout, data


def test_search_json_prints_plan_and_report_and_report_md_opens_with_the_summary(tmp_path, capsys):
    import json

    from mpq.versions import versions

    out, stdout, data = mlp_search(tmp_path, capsys, "--json")
    printed = json.loads(stdout)  # the whole of stdout is one JSON object
    assert set(printed) == {"plan", "report", "files"}
    assert printed["plan"] == json.loads((out / "plan.json").read_text())
    assert printed["report"] == json.loads((out / "report.json").read_text())
    assert printed["plan"]["versions"] == printed["report"]["versions"] == versions()
    assert str(out / "report.md") in printed["files"]
    md = (out / "report.md").read_text()
    assert md.startswith("# mpq report\n\n## Summary\n")
    summary = md.split("\n## Search\n")[0]
    assert (
        f"- Made by: `mpq search --model {Path(__file__).parent / 'user_models.py'}:mlp --data {data} --budget 300B"
        in summary
    )
    assert "- Budget: 300B (300 bytes)" in summary
    kl = printed["report"]["metrics"]["kl_to_fp32"]
    assert f"KL(FP32‖q) {kl:.4g}" in summary and "What to try next:" in summary
    fitting = [b for b in printed["report"]["baselines"] if b["fits_budget"]]
    if fitting:
        best = min(fitting, key=lambda b: b["kl_to_fp32"])
        assert f"- Best uniform plan that fits: {best['name']}, " in summary
    else:
        assert "none fits the budget" in summary


def test_search_without_json_prints_tables(tmp_path, capsys):
    _, stdout, _ = mlp_search(tmp_path, capsys)
    assert "| model | size | fits budget |" in stdout and stdout.rstrip().splitlines()[-1].startswith("wrote ")


def test_summary_names_the_api_call_and_what_to_try_next(tiny_model, tiny_data, tmp_path):
    import dataclasses

    from mpq.report.markdown import write_outputs
    from mpq.report.summary import next_steps, summary

    result = mpq.search(
        tiny_model,
        tiny_data,
        "200B",
        space=mpq.SearchSpace(bits=(2, 3, 4, 6, 8)),
        probes=mpq.ProbeSettings(max_probes=2, tol=0.001),
        metric="hessian",
        cache_dir=False,
        progress=False,
    )
    sens, plan, report = result.sensitivity, result.plan, result.report
    write_outputs(tmp_path, sens, plan, report)
    md = (tmp_path / "report.md").read_text()
    assert "- Made by: `mpq.search(model, data, budget='200B')` (Python API)" in md
    assert sens.stop_reason == "max_probes"  # two probes cannot reach a 0.1% tolerance
    steps = next_steps(sens, plan, report)
    assert any("raise `--max-probes`" in s for s in steps)
    assert sens.warnings() and any(
        f"{len(sens.warnings())} layer(s) have estimates not to be trusted" in s for s in steps
    )
    # a uniform plan that fits and beats the plan: the summary says so and what to do
    uniform = dataclasses.replace(
        report.baselines[0], name="uniform W3A8", kl_to_fp32=report.plan.kl_to_fp32 / 2, fits_budget=True
    )
    beaten = dataclasses.replace(report, baselines=[*report.baselines, uniform])
    text = "\n".join(summary(sens, plan, beaten, "mpq search --budget 200B"))
    assert "- Made by: `mpq search --budget 200B`" in text and "- Best uniform plan that fits: uniform W3A8" in text
    assert "does as well as the plan or better" in text and "A uniform plan wins (uniform W3A8)" in text


def test_summary_says_when_activation_quantization_caps_the_result(tiny_model, tiny_data):
    from mpq.report.summary import ACT_CAP, next_steps

    result = mpq.search(
        tiny_model,
        tiny_data,
        "200B",
        space=mpq.SearchSpace(bits=(2, 3, 4, 6, 8), act_bits=2),
        probes=mpq.ProbeSettings(max_probes=2),
        cache_dir=False,
        progress=False,
    )
    w8 = next(m for m in result.report.baselines if m.name.startswith("uniform W8"))
    assert w8.kl_to_fp32 >= ACT_CAP * result.report.plan.kl_to_fp32  # 2-bit inputs cost more than any weight width
    assert any(
        s.startswith("Activation quantization caps the result: uniform W8A2")
        for s in next_steps(result.sensitivity, result.plan, result.report)
    )
    floats = mpq.search(
        tiny_model,
        tiny_data,
        "200B",
        space=mpq.SearchSpace(bits=(2, 3, 4, 6, 8), act_bits=None),
        probes=mpq.ProbeSettings(max_probes=2),
        cache_dir=False,
        progress=False,
    )
    assert not any("Activation quantization" in s for s in next_steps(floats.sensitivity, floats.plan, floats.report))


def test_verify_export_and_profile_json(tmp_path, capsys):
    import json

    from tests.helpers import USER_MODELS, run_cli

    out, _, data = mlp_search(tmp_path, capsys)
    model = ("--model", f"{USER_MODELS}:mlp", "--data", data)
    status, stdout, err = run_cli(
        capsys, "verify", out / "plan.json", *model, "--out", tmp_path / "v", "--no-cache", "--quiet", "--json"
    )
    assert status == 0, err
    printed = json.loads(stdout)
    assert printed == {
        "report": json.loads((tmp_path / "v" / "report.json").read_text()),
        "files": [str(tmp_path / "v" / "report.json")],
    }
    status, stdout, err = run_cli(
        capsys, "export", out / "plan.json", *model, "--out", tmp_path / "m.mpqpack", "--no-cache", "--json"
    )
    assert status == 0, err
    written = json.loads(stdout)["export"]
    assert written["format"] == "packed" and written["file_bytes"] == (tmp_path / "m.mpqpack").stat().st_size
    status, stdout, err = run_cli(
        capsys, "profile", *model, "--out", tmp_path / "lat.csv", "--repeats", "1", "--warmup", "0", "--quiet", "--json"
    )
    assert status == 0, err
    profile = json.loads(stdout)["profile"]
    assert profile["batch"] == 1 and profile["rows"] and all(r["latency_s"] > 0 for r in profile["rows"])
    assert (
        len(profile["rows"])
        == len((tmp_path / "lat.csv").read_text().splitlines())
        - sum(1 for line in (tmp_path / "lat.csv").read_text().splitlines() if line.startswith("#"))
        - 1
    )


def test_every_command_help_shows_its_option_groups_and_examples(capsys):
    import pytest

    from mpq.cli.examples import EXAMPLES, GROUPS
    from mpq.cli.main import main

    for command, groups in GROUPS.items():
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
        assert [h for h in headings if h in groups] == list(groups), (command, headings)  # in order, none empty
        assert text.rstrip().endswith(EXAMPLES[command].splitlines()[-1]) and "\nexamples:\n  mpq " in text.replace(
            "torchrun", "mpq"
        )
        assert "--json" in text


def test_every_option_keeps_its_spelling_and_parses():
    from mpq.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "search",
            "--budget",
            "4MB",
            "--bits",
            "2,4",
            "--keep",
            "fc=8",
            "--tol",
            "0.1",
            "--solver",
            "cbc",
            "--act-observer",
            "mse",
            "--device",
            "nvidia-t4",
            "--json",
            "--quiet",
        ]
    )
    assert (args.bits, args.keep, args.tol, args.solver, args.act_observer, args.device, args.json, args.quiet) == (
        (2, 4),
        ["fc=8"],
        0.1,
        "cbc",
        "mse",
        "nvidia-t4",
        True,
        True,
    )
    assert parser.parse_args(["solve", "--table", "t.csv", "--budget", "1KB"]).json is False
    assert parser.parse_args(["profile", "--out", "t.csv", "--threads", "1", "--json"]).threads == 1


def test_pareto_and_solve_json(tmp_path, capsys):
    import json

    from tests.helpers import USER_MODELS, mlp_data, run_cli

    data = mlp_data(tmp_path / "d.npz")
    out = tmp_path / "p"
    status, stdout, err = run_cli(
        capsys,
        "pareto",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--budget",
        "250B:400B:3",
        "--bits",
        "2,4,8",
        "--verify-points",
        "0",
        "--out",
        out,
        *MLP_FAST,
        "--json",
    )
    assert status == 0, err
    printed = json.loads(stdout)
    assert printed == {
        "pareto": json.loads((out / "pareto.json").read_text()),
        "files": [str(out / n) for n in ("pareto.json", "pareto.csv", "pareto.png")],
    }
    table = tmp_path / "problem.csv"
    table.write_text(
        "layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s\na,4,8,3.0,100,1,0\na,8,8,1.0,200,2,0\n"
    )
    status, stdout, err = run_cli(
        capsys, "solve", "--table", table, "--budget", "150B", "--out", tmp_path / "s", "--json"
    )
    assert status == 0, err
    assert json.loads(stdout) == {
        "plan": json.loads((tmp_path / "s" / "plan.json").read_text()),
        "files": [str(tmp_path / "s" / "plan.json")],
    }
