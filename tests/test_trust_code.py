"""Issue 25, item 1: no code runs from any file mpq reads. Each crafted file would create a marker file if
mpq imported or called what it names; each run must exit 2 with one line, and leave no marker."""

import json
import os

import pytest
import torch

from mpq.inputs.specs import load_model_spec
from tests.helpers import USER_MODELS, mlp_data, run_cli


@pytest.fixture
def evil(tmp_path):
    """A Python file that creates `marker` when imported, and the marker's path."""
    marker = tmp_path / "marker"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nx = 1\n")
    return tmp_path / "evil.py", marker


def one_line_exit_2(status, err, *words):
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err


@pytest.mark.parametrize(
    "recipe, option",
    [
        ('model = "subprocess:getoutput"\nmodel-arg = ["cmd=touch {marker}"]\n', "--model"),
        ('model = "{evil}:x"\n', "--model"),
        ('data = "{evil}:x"\n', "--data"),
        ('eval-data = "{evil}:x"\n', "--eval-data"),
        ('loss = "{evil}:x"\n', "--loss"),
        ('model = ["{evil}:x"]\n', "--model"),
    ],
)
def test_a_recipe_naming_code_is_refused_before_anything_is_imported(tmp_path, evil, capsys, recipe, option):
    path, marker = evil
    (tmp_path / "r.toml").write_text(recipe.format(evil=path, marker=marker))
    data = mlp_data(tmp_path / "d.npz")
    given = [] if option == "--model" else ["--model", f"{USER_MODELS}:mlp"]
    if option != "--data":
        given += ["--data", data]
    status, _, err = run_cli(
        capsys, "search", "--config", tmp_path / "r.toml", *given, "--budget", "1KB", "--out", tmp_path / "o"
    )
    one_line_exit_2(status, err, f"pass {option} ", "on the command line")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_a_plan_recipe_naming_code_is_refused_and_config_with_equals_is_read(tmp_path, evil, capsys):
    path, marker = evil
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"recipe": {"model": "subprocess:getoutput", "model-arg": [f"cmd=touch {marker}"]}}))
    for config in (["--config", plan], [f"--config={plan}"], ["--conf", plan]):
        status, _, err = run_cli(capsys, "search", *config, "--budget", "1KB", "--out", tmp_path / "o")
        one_line_exit_2(status, err, "pass --model subprocess:getoutput on the command line")
    assert not marker.exists()


def test_the_command_line_gives_the_code_and_the_recipe_the_rest(tmp_path, evil, capsys):
    path, marker = evil
    (tmp_path / "r.toml").write_text(f'model = "{path}:x"\nbudget = ["1KB"]\nmax-probes = 2\nno-cache = true\n')
    data = mlp_data(tmp_path / "d.npz")
    status, _, err = run_cli(
        capsys, "search", "--config", tmp_path / "r.toml", "--model", f"{USER_MODELS}:mlp", "--data", data,
        "--out", tmp_path / "o", "--quiet",
    )  # fmt: skip
    assert status == 0, err
    assert not marker.exists()
    assert json.loads((tmp_path / "o" / "plan.json").read_text())["recipe"]["model"] == f"{USER_MODELS}:mlp"


def test_a_recipe_that_is_not_utf8_or_not_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "r.toml").write_bytes(b'budget = ["\xff\xfe"]\n')
    os.mkfifo(tmp_path / "fifo.toml")
    for recipe, words in ((tmp_path / "r.toml", "not UTF-8"), (tmp_path / "fifo.toml", "is not a file")):
        status, _, err = run_cli(capsys, "search", "--config", recipe, "--budget", "1KB", "--out", tmp_path / "o")
        one_line_exit_2(status, err, words)


class _OpensAFile:
    """Unpickling it creates a file: what a crafted archive could do with pickle.loads."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted_pt2(tmp_path, marker, how):
    """A clean .pt2 of a small MLP with one constant, then one member rewritten as `how` says."""
    import io
    import pickle
    import zipfile

    from torch import nn

    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)
            self.offset = torch.ones(4)  # a plain tensor attribute: saved as a constant

        def forward(self, x):
            return self.fc(x) + self.offset

    batch = torch.export.Dim("batch")
    program = torch.export.export(WithConstant(), (torch.randn(4, 6),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "clean.pt2")
    payload = io.BytesIO()
    torch.save(_OpensAFile(marker), payload)
    with zipfile.ZipFile(tmp_path / "clean.pt2") as clean, zipfile.ZipFile(tmp_path / "bad.pt2", "w") as bad:
        for info in clean.infolist():
            data = clean.read(info.filename)
            if info.filename.endswith("model_constants_config.json"):
                config = json.loads(data)
                (entry,) = config["config"].values()
                if how in ("opaque_obj_0", "custom_obj_0"):
                    entry["path_name"] = how
                    code = pickle.dumps(_OpensAFile(marker))  # whole float32s: torch reads it as raw bytes too
                    member = info.filename.replace("model_constants_config.json", how)
                    bad.writestr(member, code + b"." * (-len(code) % 4))
                elif how == "pickled tensor":
                    entry["use_pickle"] = True
                elif how == "deep":
                    config = "[" * 100_000 + "]" * 100_000
                data = json.dumps(config).encode() if how != "deep" else config.encode()
            elif info.filename.endswith("constants/tensor_0") and how == "pickled tensor":
                data = payload.getvalue()
            bad.writestr(info, data)
    return tmp_path / "bad.pt2"


@pytest.mark.parametrize("how", ["opaque_obj_0", "custom_obj_0", "pickled tensor", "deep"])
def test_a_pt2_with_constants_that_unpickle_is_refused(tmp_path, capsys, how):
    marker = tmp_path / "marker"
    bad = _crafted_pt2(tmp_path, marker, how)
    data = mlp_data(tmp_path / "d.npz")
    for command in (["search", "--budget", "1KB", "--out", tmp_path / "o"], ["profile", "--out", tmp_path / "t.csv"]):
        status, _, err = run_cli(capsys, *command, "--model", bad, "--data", data)
        one_line_exit_2(status, err, str(bad))
        assert not marker.exists()
    assert not (tmp_path / "o").exists()
    assert load_model_spec(str(tmp_path / "clean.pt2"))(torch.randn(3, 6)).shape == (3, 4)
