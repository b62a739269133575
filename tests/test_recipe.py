"""Recipes: `--config recipe.toml` gives the same plan as the same options on the command line, and a
plan.json's recorded recipe repeats its run."""

import json

import pytest

from tests.helpers import USER_MODELS, mlp_data, run_cli


@pytest.fixture
def data(tmp_path):
    return mlp_data(tmp_path / "d.npz")


def plan_of(path):
    plan = json.loads(path.read_text())
    return plan["layers"], plan["settings"], plan["predicted"]


def test_a_toml_recipe_gives_the_plan_its_options_give(tmp_path, data, capsys):
    (tmp_path / "r.toml").write_text(
        'budget = ["1KB"]\nbits = [4, 8]\nmax-probes = 3\nno_cache = true\nno-act-sensitivity = true\nkeep = ["head=8"]\n'
    )
    model = ["--model", f"{USER_MODELS}:mlp"]  # code comes only from the command line
    status, _, err = run_cli(
        capsys, "search", "--config", tmp_path / "r.toml", *model, "--data", data, "--out", tmp_path / "a", "--quiet"
    )
    assert status == 0, err
    flags = [
        "--model",
        f"{USER_MODELS}:mlp",
        "--budget",
        "1KB",
        "--bits",
        "4,8",
        "--max-probes",
        "3",
        "--no-cache",
        "--no-act-sensitivity",
        "--keep",
        "head=8",
    ]
    status, _, err = run_cli(capsys, "search", *flags, "--data", data, "--out", tmp_path / "b", "--quiet")
    assert status == 0, err
    assert plan_of(tmp_path / "a" / "plan.json") == plan_of(tmp_path / "b" / "plan.json")
    settings = json.loads((tmp_path / "a" / "plan.json").read_text())["settings"]
    assert (
        settings["search_space"]["bits"] == [4, 8]
        and settings["probes"]["max_probes"] == 3
        and settings["keep"] == {"head": 8}
    )


def test_a_plan_repeats_its_run_and_the_command_line_takes_precedence(tmp_path, data, capsys):
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--budget",
        "1KB",
        "--max-probes",
        "3",
        "--no-cache",
        "--out",
        tmp_path / "a",
        "--quiet",
    )
    assert status == 0, err
    recipe = json.loads((tmp_path / "a" / "plan.json").read_text())["recipe"]
    assert (
        recipe["budget"] == ["1KB"] and recipe["max-probes"] == 3 and not {"out", "no-cache", "cache-dir"} & set(recipe)
    )
    model = ["--model", f"{USER_MODELS}:mlp"]  # the recipe's model is code: it comes from the command line
    status, _, err = run_cli(
        capsys, "search", "--config", tmp_path / "a" / "plan.json", *model, "--out", tmp_path / "b", "--quiet"
    )
    assert status == 0, err
    assert plan_of(tmp_path / "a" / "plan.json") == plan_of(tmp_path / "b" / "plan.json")
    status, _, err = run_cli(
        capsys,
        "search",
        f"--config={tmp_path / 'a' / 'plan.json'}",
        *model,
        "--bits",
        "8",
        "--out",
        tmp_path / "c",
        "--quiet",
    )
    assert status == 0 and set(
        json.loads((tmp_path / "c" / "plan.json").read_text())["settings"]["search_space"]["bits"]
    ) == {8}


@pytest.mark.parametrize(
    "text, message",
    [
        ('budgett = ["1KB"]\n', "names 'budgett', which is not an option of `mpq search`"),
        ("budget = [\n", "is not a valid TOML recipe"),
        ('no-cache = "yes"\n', "no-cache is a switch: write no-cache = true"),
    ],
)
def test_bad_recipes_exit_2_with_one_line(tmp_path, data, capsys, text, message):
    (tmp_path / "r.toml").write_text(text)
    status, _, err = run_cli(
        capsys, "search", "--config", tmp_path / "r.toml", "--data", data, "--budget", "1KB", "--out", tmp_path / "o"
    )
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
