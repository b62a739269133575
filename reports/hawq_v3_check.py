"""External check: mpq's integer program on HAWQ-V3's own inputs against its 18 published mixed configurations.

Run:  python reports/hawq_v3_check.py
Writes reports/hawq_v3_check.md. Each table is built as tests/test_hawq_v3.py builds it and solved by
`mpq solve --table` (the real command, one subprocess per configuration); every number is measured in this run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from test_hawq_v3 import CONFIGS, KIND, budget_text, limit, objective, published_bits, run_mpq, total, write_table  # noqa: E402


def main() -> None:
    lines = [
        "# HAWQ-V3 published configurations against `mpq solve --table`",
        "",
        "Inputs: HAWQ-V3's ILP.ipynb arrays (tests/data/hawq_v3). Ω = trace · ‖ΔW‖² summed over the ILP layers;",
        "limit = cost(all 4-bit) + r · (cost(all 8-bit) − cost(all 4-bit)). Ω ratio = mpq's Ω / published Ω.",
        "",
        "| network | constraint | r | budget | published Ω | mpq Ω | Ω ratio | layers differing | mpq cost / limit | wall s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for config in sorted(CONFIGS, key=lambda c: (c["network"], c["constraint"], c["budget_fraction_r"])):
            network, r, kind = config["network"], config["budget_fraction_r"], KIND[config["constraint"]]
            table, out = Path(tmp) / f"{network}.csv", Path(tmp) / "out"
            write_table(table, network)
            text = budget_text(kind, limit(network, kind, r))
            start = time.perf_counter()
            done = run_mpq("solve", "--table", str(table), "--budget", text, "--out", str(out))
            seconds = time.perf_counter() - start
            assert done.returncode == 0, done.stderr
            bits = {n: e["weight_bits"] for n, e in json.loads((out / "plan.json").read_text())["layers"].items()}
            theirs = published_bits(config)
            ours_omega, their_omega = objective(network, bits), objective(network, theirs)
            differing = sum(bits[n] != theirs[n] for n in bits)
            lines.append(
                f"| {network} | {config['constraint']} | {r} | `{text}` | {their_omega:.6g} | {ours_omega:.6g} | "
                f"{ours_omega / their_omega:.6f} | {differing} | {total(network, kind, bits) / limit(network, kind, r):.6f} | {seconds:.1f} |"
            )
    lines += ["", "wall s: the whole `mpq solve --table` process (Python start and imports included).", ""]
    (HERE / "hawq_v3_check.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
