"""Atomic writes end with the mode the user's umask gives, and figures use unique temporary files."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from PIL import Image

from mpq.files import atomic_path, current_umask, write_json_atomic, write_text_atomic
from mpq.report.markdown import _save_figure


@pytest.fixture
def umask():
    """Set the umask for one test and restore it after."""
    old = os.umask(0o022)
    try:
        yield lambda value: os.umask(value)
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    write_json_atomic(tmp_path / "plan.json", {"a": 1})
    write_text_atomic(tmp_path / "report.md", "# report\n")
    assert mode(tmp_path / "plan.json") == expected
    assert mode(tmp_path / "report.md") == expected
    assert (tmp_path / "plan.json").read_text() == '{\n "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "report.md"]  # no temporary file left


def test_current_umask_leaves_the_umask_as_it_was(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def figure(value: float) -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1, 2], [0, value, 0])
    return fig


def test_two_threads_saving_one_figure_path_both_succeed(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "out" / "layers.png"
    rounds = 15
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def save_many(value: float) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                _save_figure(figure(value), target)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=save_many, args=(v,)) for v in (1.0, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in target.parent.iterdir()] == ["layers.png"]  # no temporary file left
    with Image.open(target) as image:
        assert image.format == "PNG" and image.size == (220, 220)  # 2 in at dpi 110
        image.verify()
    assert mode(target) == 0o644
