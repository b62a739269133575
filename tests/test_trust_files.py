"""Issue 25, item 1: the atomic writer never replaces what is not a regular file (/dev/null, a FIFO, a
folder): refused up front in one line, and the path is left as it was."""

import os
import stat

import pytest

from mpq.errors import MpqError
from mpq.files import check_replaceable, write_bytes_atomic, write_json_atomic
from tests.helpers import USER_MODELS, mlp_data, run_cli


@pytest.fixture
def specials(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "fifo", tmp_path / "link-to-fifo")
    return {"a FIFO": tmp_path / "fifo", "a folder": tmp_path / "folder", "a FIFO ": tmp_path / "link-to-fifo"}


def test_the_atomic_writer_refuses_what_is_not_a_regular_file(specials, tmp_path):
    for kind, path in specials.items():
        before = os.lstat(path)
        with pytest.raises(MpqError, match=f"is {kind.strip()}, not a regular file"):
            write_bytes_atomic(path, b"x")
        with pytest.raises(MpqError, match="not a regular file"):
            write_json_atomic(path, {})
        assert os.lstat(path).st_mode == before.st_mode and os.lstat(path).st_ino == before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "link-to-fifo"]  # no temporary file
    with pytest.raises(MpqError, match="/dev/null is a device, not a regular file"):
        check_replaceable("/dev/null")  # checked, not written: a failure here must not clobber the machine's
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    write_bytes_atomic(tmp_path / "new", b"1")  # a missing path and a regular file are written as before
    write_bytes_atomic(tmp_path / "new", b"2")
    assert (tmp_path / "new").read_bytes() == b"2"


@pytest.mark.parametrize("command", ["profile", "export"])
def test_out_naming_a_fifo_is_refused_before_the_work(specials, tmp_path, capsys, command):
    data = mlp_data(tmp_path / "d.npz")
    model = ["--model", f"{USER_MODELS}:mlp", "--data", data]
    if command == "export":
        status, _, err = run_cli(
            capsys, "search", *model, "--budget", "1KB", "--max-probes", "2", "--no-cache", "--out", tmp_path / "s",
            "--quiet",
        )  # fmt: skip
        assert status == 0, err
        model = [tmp_path / "s" / "plan.json", *model, "--no-cache"]
    status, out, err = run_cli(capsys, command, *model, "--out", specials["a FIFO"])
    assert status == 2 and len(err.strip().splitlines()) == 1 and "is a FIFO, not a regular file" in err, err
    assert stat.S_ISFIFO(os.stat(specials["a FIFO"]).st_mode)


def test_a_full_disk_is_one_line_and_leaves_no_half_file(tmp_path):
    """RLIMIT_FSIZE makes a write past 1,000 bytes fail with EFBIG, as a full disk fails with ENOSPC."""
    import subprocess
    import sys

    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "from mpq.errors import MpqError\n"
        "from mpq.files import write_bytes_atomic\n"
        "try:\n"
        f"    write_bytes_atomic({str(tmp_path / 'big.bin')!r}, b'x' * 5000)\n"
        "except MpqError as exc:\n"
        "    print(exc)\n"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": root}
    )
    assert run.returncode == 0 and run.stdout.startswith(f"cannot write {tmp_path / 'big.bin'} (File too large)"), run
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_of_another_type_is_one_line():
    from mpq.cache import open_cache

    for bad in (3, True, 2.5):
        with pytest.raises(MpqError, match="cache_dir must be a folder"):
            open_cache(bad)
