"""External check: HAWQ-V3's own integer-program inputs and its 18 published mixed configurations.

The tables are built from tests/data/hawq_v3 (HAWQ repository, MIT license; see its README) exactly as its README states: per layer two
choices, 4 or 8 bits for the weights and the activation feeding them; Omega = trace * delta(bits);
size = params * bits / 8 bytes; BOPs = MACs * bits * bits; latency = the measured arrays (ms, written
in seconds); the equal-bits pairs as groups; limit = cost(4) + r * (cost(8) - cost(4)) over the ILP
layers. The real `mpq solve --table` command solves each one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpq.cost.budget import parse_budget
from mpq.solver.problem import solve_problem
from mpq.solver.table import read_table

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MPQ_HAWQ_V3_DATA", REPO / "tests" / "data" / "hawq_v3"))  # a copy of shared/data/hawq_v3
KIND = {"modelsize": "size_bytes", "bops": "bops", "latency": "latency_s"}
# the notebook's units per cost kind, as multiples of ours (bytes, BOPs, seconds)
NOTEBOOK_UNIT = {
    ("resnet18", "size_bytes"): 2.0**20,  # MiB
    ("resnet50", "size_bytes"): 1e6,  # MB
    ("resnet18", "bops"): 1.024e9,  # MACs / 1e6 * bits * bits / 1024
    ("resnet50", "bops"): 1.024e9,
    ("resnet18", "latency_s"): 1e-3,  # ms
    ("resnet50", "latency_s"): 1e-3,
}
NOT_OPTIMAL = ("resnet50", "modelsize", 0.25)  # the README: feasible, not optimal
NOT_OPTIMAL_LAYER = "stage3.unit6.quant_convbn1"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"HAWQ-V3 data not found at {DATA}")


def _inputs() -> dict:
    return json.loads((DATA / "ilp_inputs.json").read_text())


def _published() -> list[dict]:
    configs = json.loads((DATA / "bit_configs.json").read_text())["configs"]
    return [c for c in configs.values() if c.get("constraint") in KIND and c["network"] in ("resnet18", "resnet50")]


def _count(value: float, scale: float) -> int:
    """An integer count from the notebook's literal (resnet50 lists counts / 1e6)."""
    count = round(value * scale)
    assert abs(count - value * scale) < 1e-6 * max(1.0, count), value
    return count


def layer_costs(network: str) -> dict[str, dict[int, dict[str, float]]]:
    """Per layer, per bits (4, 8): omega and the three costs, in mpq's units."""
    net = _inputs()[network]
    raw = net["raw_literals"]
    scale = 1 if network == "resnet18" else 10**6
    table = {}
    for i, name in enumerate(net["layers"]):
        params, macs = _count(raw["parameters"][i], scale), _count(raw["bops"][i], scale)
        table[name] = {
            bits: {
                "omega": raw["Hutchinson_trace"][i] * raw[f"delta_weights_{bits}bit_square"][i],
                "size_bytes": params * bits / 8,
                "bops": float(macs * bits * bits),
                "latency_s": raw[f"latency_int{bits}"][i] * 1e-3,
            }
            for bits in (4, 8)
        }
    return table


def equal_bits_groups(network: str) -> dict[str, str]:
    net = _inputs()[network]
    return {net["layers"][i]: f"pair{k}" for k, pair in enumerate(net["ilp_constraints_equal_bits"]) for i in pair}


def write_table(path: Path, network: str, with_groups: bool = True) -> None:
    groups = equal_bits_groups(network) if with_groups else {}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "weight_bits", "act_bits", "omega", "size_bytes", "bops", "latency_s", "group"])
        for name, per_bits in layer_costs(network).items():
            for bits, v in per_bits.items():
                cells = [repr(v[k]) for k in ("omega", "size_bytes", "bops", "latency_s")]  # repr: exact round trip
                writer.writerow([name, bits, bits, *cells, groups.get(name, "")])


def limit(network: str, kind: str, r: float) -> float:
    costs = layer_costs(network)
    low = sum(v[4][kind] for v in costs.values())
    high = sum(v[8][kind] for v in costs.values())
    return low + r * (high - low)


def budget_text(kind: str, value: float) -> str:
    """The limit in the table's own units, never cut below its true value."""
    if kind == "size_bytes":
        return f"{math.floor(value)}B"  # every size in these tables is a whole number of bytes
    return f"{value!r}{'BOPs' if kind == 'bops' else 's'}"  # repr round-trips the float exactly


def objective(network: str, bits: dict[str, int]) -> float:
    return sum(v[bits[name]]["omega"] for name, v in layer_costs(network).items())


def total(network: str, kind: str, bits: dict[str, int]) -> float:
    return sum(v[bits[name]][kind] for name, v in layer_costs(network).items())


def published_bits(config: dict) -> dict[str, int]:
    return dict(zip(_inputs()[config["network"]]["layers"], config["ilp_vector_bits"]))


def run_mpq(*args: str) -> subprocess.CompletedProcess:
    """The installed `mpq` console script, importing this checkout's mpq."""
    script = Path(sys.executable).with_name("mpq")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def _config_id(config: dict) -> str:
    return f"{config['network']}-{config['constraint']}-{config['budget_fraction_r']}"


CONFIGS = _published() if DATA.is_dir() else []


def test_all_eighteen_published_mixed_configurations_are_here():
    assert len(CONFIGS) == 18
    assert {(c["network"], c["constraint"], c["budget_fraction_r"]) for c in CONFIGS} == {
        (n, k, r) for n in ("resnet18", "resnet50") for k in KIND for r in (0.25, 0.5, 0.75)
    }


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_limits_reproduce_the_notebook(config):
    kind = KIND[config["constraint"]]
    ours = limit(config["network"], kind, config["budget_fraction_r"])
    assert ours / NOTEBOOK_UNIT[config["network"], kind] == pytest.approx(config["ilp_limit"], rel=1e-9)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_mpq_solve_table_matches_or_beats_the_published_configuration(config, tmp_path):
    network, r = config["network"], config["budget_fraction_r"]
    kind = KIND[config["constraint"]]
    table, out = tmp_path / f"{network}.csv", tmp_path / "out"
    write_table(table, network)
    value = limit(network, kind, r)
    text = budget_text(kind, value)
    if kind == "size_bytes":  # whole bytes: the floor of the limit admits exactly the same plans
        assert all(v[b]["size_bytes"] == int(v[b]["size_bytes"]) for v in layer_costs(network).values() for b in (4, 8))
        assert parse_budget(text).limit == math.floor(value)
    else:
        assert parse_budget(text).limit == value  # the text gives back the limit to the last bit

    done = run_mpq("solve", "--table", str(table), "--budget", text, "--out", str(out))
    assert done.returncode == 0, done.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["schema"] == "mpq.plan/1"
    bits = {name: entry["weight_bits"] for name, entry in plan["layers"].items()}
    assert all(entry["act_bits"] == entry["weight_bits"] for entry in plan["layers"].values())
    published = published_bits(config)

    assert set(bits) == set(published)
    assert total(network, kind, bits) <= value
    assert total(network, kind, published) <= value  # the published one is feasible too
    for a, b in _inputs()[network]["ilp_constraints_equal_bits"]:
        layers = _inputs()[network]["layers"]
        assert bits[layers[a]] == bits[layers[b]]
    ours, theirs = objective(network, bits), objective(network, published)
    assert plan["predicted"]["omega"] == pytest.approx(ours, rel=1e-12)
    assert ours <= theirs * (1 + 1e-12)
    if (network, config["constraint"], r) == NOT_OPTIMAL:
        assert ours < theirs * (1 - 1e-6)
        assert [n for n in bits if bits[n] != published[n]] == [NOT_OPTIMAL_LAYER]
        assert (bits[NOT_OPTIMAL_LAYER], published[NOT_OPTIMAL_LAYER]) == (8, 4)
    else:
        assert bits == published


def _optimum(tmp_path: Path, config: dict, with_groups: bool) -> dict[str, int]:
    network, kind = config["network"], KIND[config["constraint"]]
    table = tmp_path / f"{network}-{with_groups}.csv"
    write_table(table, network, with_groups)
    problem = read_table(table, [parse_budget(budget_text(kind, limit(network, kind, config["budget_fraction_r"])))])
    return {name: c.weight_bits for name, c in solve_problem(problem).choices.items()}


def test_without_the_equal_bits_pairs_nine_optima_change(tmp_path):
    changed = [_config_id(c) for c in CONFIGS if _optimum(tmp_path, c, True) != _optimum(tmp_path, c, False)]
    assert len(changed) == 9, changed


def test_an_unreachable_latency_budget_exits_3_naming_the_least_latency(tmp_path):
    table = tmp_path / "resnet18.csv"
    write_table(table, "resnet18")
    assert all(v[4]["latency_s"] < v[8]["latency_s"] for v in layer_costs("resnet18").values())
    least = limit("resnet18", "latency_s", 0.0)  # so the least latency is every layer at 4 bits
    done = run_mpq(
        "solve", "--table", str(table), "--budget", f"{least * 0.99 * 1e3!r}ms", "--out", str(tmp_path / "out")
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    named = done.stderr.split("smallest that can be met is ")[1].split(";")[0]
    assert parse_budget(named.replace(" ", "")).limit >= least  # typing the named value back is feasible
    assert parse_budget(named.replace(" ", "")).limit <= least * (1 + 1e-5)
    assert not (tmp_path / "out" / "plan.json").exists()
