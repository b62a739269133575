"""The examples each `mpq COMMAND --help` ends with (its argparse epilog), and the option groups' titles."""

from __future__ import annotations

# option group titles, in the order `--help` shows them (docs/cli.md has the same groups)
BUDGET = "budget and widths"
SWEEP = "sweep"
PROBLEM = "problem"
MODEL = "model and data"
LATENCY = "latency model"
SOLVER = "solver"
QUANTIZER = "quantizer"
PROBING = "sensitivity: probing, metric, loss and cache"
TIMING = "timing"
OUTPUT = "output"

GROUPS = {
    "search": (BUDGET, MODEL, LATENCY, SOLVER, QUANTIZER, PROBING, OUTPUT),
    "pareto": (SWEEP, BUDGET, MODEL, SOLVER, QUANTIZER, PROBING, OUTPUT),
    "solve": (PROBLEM, BUDGET, SOLVER, OUTPUT),
    "sensitivity": (MODEL, PROBING, OUTPUT),
    "verify": (MODEL, LATENCY, QUANTIZER, OUTPUT),
    "profile": (MODEL, TIMING, OUTPUT),
    "export": (MODEL, QUANTIZER, OUTPUT),
}

EXAMPLES = {
    "search": """\
examples:
  mpq search --budget 4MB                                   the built-in EfficientNet-Lite0 in 4 MB
  mpq search --model my_model.py:Net --data data.npz --budget 500KB --bits 2,4,8 --keep-first 8
  mpq search --budget 3.5MiB --act-bits 4,8 --json > result.json          plan and report as one JSON object""",
    "pareto": """\
examples:
  mpq pareto --budget 2MB:6MB                               30 sizes, 6 of them measured
  mpq pareto --budget 10GBOPs:40GBOPs:20 --also-budget 4MB --verify-points all""",
    "solve": """\
examples:
  mpq solve --table problem.csv --budget 4MB
  mpq solve --table problem.csv --budget 4MB --budget 20GBOPs --keep fc=8 --solver cbc --json""",
    "sensitivity": """\
examples:
  mpq sensitivity                                           the default metric (kl_anchored) on the built-in model
  mpq sensitivity --model my_model.py:Net --data data.npz --metric fisher --json
  torchrun --nproc-per-node 2 -m mpq.cli.main sensitivity --model my_model.py:build --data calib.npz""",
    "verify": """\
examples:
  mpq verify mpq-out/plan.json
  mpq verify plan.json --model my_model.py:Net --data held_out.npz --quantizer minmax --json""",
    "profile": """\
examples:
  mpq profile --out latency.csv --threads 1
  mpq profile --model my_model.py:Net --data data.npz --batch 8 --out latency.csv""",
    "export": """\
examples:
  mpq export mpq-out/plan.json --out model.mpqpack
  mpq export plan.json --format onnx --out model.onnx --model my_model.py:Net --data data.npz""",
}

TOP = """\
examples:
  mpq search --budget 4MB              find a plan for the built-in model in 4 MB
  mpq search --help                    every option of a command, in groups, with examples
  mpq --version"""
