"""mpq.progress: bars and notes on stderr only when asked, or when stderr is a terminal."""

import pytest

import mpq
from mpq import progress
from mpq.cli.parser import build_parser, progress_arg
from mpq.errors import MpqError


def test_auto_is_quiet_when_stderr_is_not_a_terminal(capsys):
    assert progress.enabled(None) is False  # pytest's captured stderr is no terminal
    assert progress.enabled(True) is True and progress.enabled(False) is False


def test_a_bar_writes_to_stderr_only_when_asked(capsys):
    with progress.bar(3, "measuring", True, unit="plan") as shown:
        for _ in range(3):
            shown.update(1)
        shown.set_postfix_str("uniform W8")
    progress.note("resuming from 2 probes", True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "measuring" in err and "3/3" in err and "uniform W8" in err and "resuming from 2 probes" in err
    for quiet in (False, None):
        with progress.bar(3, "measuring", quiet) as shown:
            shown.update(3)
            shown.set_postfix_str("x")
            assert shown.n == 3
        progress.note("a note", quiet)
        assert capsys.readouterr() == ("", "")


def hessian_run(model, data, flag):
    return mpq.analyze(
        model, data, metric="hessian", max_probes=4, min_probes=2, batch_size=8, cache_dir=False, progress=flag
    )


def test_a_hessian_run_shows_its_probes_and_target_only_when_asked(tiny_model, tiny_data, capsys):
    shown = hessian_run(tiny_model, tiny_data, True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "hessian: probes" in err and "/4" in err and "(target 5%)" in err and "layers still probed" in err
    quiet = hessian_run(tiny_model, tiny_data, False)
    assert capsys.readouterr() == ("", "")
    auto = hessian_run(tiny_model, tiny_data, None)
    assert capsys.readouterr() == ("", "")
    for a, b in ((shown, quiet), (shown, auto)):  # progress changes nothing but stderr
        assert [s.hessian_trace for s in a.layers.values()] == [s.hessian_trace for s in b.layers.values()]


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "plan.json"],
        ["export", "plan.json", "--out", "m.bin"],
        ["profile", "--out", "t.csv"],
        ["sensitivity"],
        ["search", "--budget", "4MB"],
        ["pareto", "--budget", "2MB:4MB"],
    ],
)
def test_every_command_that_runs_a_model_takes_quiet_and_verbose(command):
    parse = build_parser().parse_args
    assert progress_arg(parse(command)) is None
    assert progress_arg(parse([*command, "--quiet"])) is False
    assert progress_arg(parse([*command, "--verbose"])) is True
    with pytest.raises(MpqError, match="not allowed with"):
        parse([*command, "--quiet", "--verbose"])
