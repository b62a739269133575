"""Issue 25, item 4: more inputs that must be one line (exit 2 or 3) before the work: --plot with a name
matplotlib cannot write, a FIFO as the latency table, torchrun's variables set wrongly, and the hint for a
bits-per-weight budget that cannot be met names --group-size."""

import os

import pytest

from mpq.cost.latency_table import read_latency_table
from mpq.errors import MpqError
from tests.helpers import USER_MODELS, mlp_data, run_cli


@pytest.fixture
def model(tmp_path):
    return ["--model", f"{USER_MODELS}:mlp", "--data", mlp_data(tmp_path / "d.npz"), "--no-cache"]


def one_line(status, err, code, words):
    assert status == code and len(err.strip().splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("name", ["x.txt", "chart"])
def test_a_plot_name_matplotlib_cannot_write_is_refused_first(tmp_path, capsys, model, name):
    status, _, err = run_cli(capsys, "sensitivity", *model, "--max-probes", "2", "--plot", tmp_path / name)
    one_line(status, err, 2, "give a file name ending in .png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_a_fifo_as_the_latency_table_is_refused_not_read(tmp_path, capsys, model):
    os.mkfifo(tmp_path / "table.csv")
    with pytest.raises(MpqError, match="is a FIFO, not a regular file"):
        read_latency_table(tmp_path / "table.csv")
    status, _, err = run_cli(
        capsys, "search", *model, "--budget", "1ms", "--latency-table", tmp_path / "table.csv", "--out", tmp_path / "o"
    )
    one_line(status, err, 2, "is a FIFO, not a regular file")


@pytest.mark.parametrize(
    "environment, words",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number of processes"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not a number of processes"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK is not"),
    ],
)
def test_torchrun_variables_set_wrongly_are_one_line(tmp_path, capsys, monkeypatch, model, environment, words):
    monkeypatch.delenv("RANK", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    status, _, err = run_cli(capsys, "sensitivity", *model, "--max-probes", "2", "--no-plot")
    one_line(status, err, 2, words)


def test_an_empty_world_size_is_one_process(tmp_path, capsys, monkeypatch, model):
    monkeypatch.setenv("WORLD_SIZE", "")
    status, _, err = run_cli(capsys, "sensitivity", *model, "--max-probes", "2", "--no-plot", "--quiet")
    assert status == 0, err


def test_an_unmeetable_bits_per_weight_budget_names_group_size(tmp_path, capsys, model):
    status, _, err = run_cli(
        capsys, "search", *model, "--budget", "2bpw", "--bits", "4,8", "--group-size", "32", "--out", tmp_path / "o"
    )
    one_line(status, err, 3, "a larger --group-size")


def test_eval_data_of_another_shape_than_data_is_refused(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    for name, size in (("d", 16), ("e", 12)):  # the conv net pools globally: it runs on either size
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(8, 3, size, size)).astype("float32"))
    model = ["--model", f"{USER_MODELS}:small_convnet", "--data", tmp_path / "d.npz", "--no-cache"]
    for command in (
        ["search", "--budget", "1MB", "--out", tmp_path / "o"],
        ["pareto", "--budget", "1MB", "--out", tmp_path / "p"],
    ):
        status, _, err = run_cli(capsys, *command, *model, "--eval-data", tmp_path / "e.npz", "--max-probes", "2")
        one_line(status, err, 2, "has samples of shape [3, 12, 12], the data fitted on (--data) [3, 16, 16]")


def test_search_space_takes_numpy_widths_and_refuses_a_bare_number():
    import numpy as np

    from mpq.plan.settings import SearchSpace

    space = SearchSpace(bits=(np.int64(4), 8), act_bits=np.int64(8), keep={"fc": np.int32(8)})
    assert space.bits == (4, 8) and space.act_bits == (8,) and space.keep == {"fc": 8}
    assert all(type(b) is int for b in (*space.bits, *space.act_bits, *space.keep.values()))
    for bad in (4, np.int64(4), "48", None, 4.0):
        with pytest.raises(MpqError, match="bits must be a tuple of widths"):
            SearchSpace(bits=bad)
    with pytest.raises(MpqError, match="act_bits must be widths"):
        SearchSpace(act_bits="8")


def test_act_bits_zero_is_refused_not_taken_as_float(tmp_path, capsys, model):
    status, _, err = run_cli(capsys, "search", *model, "--budget", "1KB", "--act-bits", "0", "--out", tmp_path / "o")
    one_line(status, err, 2, "write 'none' to keep activations in float")


def test_an_empty_device_is_refused(tmp_path, capsys, model):
    status, _, err = run_cli(capsys, "search", *model, "--budget", "1KB", "--device", "", "--out", tmp_path / "o")
    one_line(status, err, 2, "--device is empty")
