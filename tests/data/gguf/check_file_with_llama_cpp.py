"""Check that llama.cpp's own GGUF reader (ggml/src/gguf.cpp) reads mpq's GGUF files as mpq predicts.

Not a test (it needs a compiler): builds the same library as make_fixtures.py plus gguf.cpp, writes the
files of tests/test_gguf_file.py with mpq.export.gguf_file.write_gguf (alignment 32 and 64), and checks
llama.cpp's tensor count, alignment, data offset, and each tensor's name, type, offset, size and bytes.

    PYTHONPATH=. python tests/data/gguf/check_file_with_llama_cpp.py --llama-cpp DIR
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from make_fixtures import build_library  # noqa: E402
from test_gguf_file import METADATA, tensors  # noqa: E402

from mpq.export.gguf_file import write_gguf  # noqa: E402


class InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def load(src: Path, tmp: Path):
    build_library(src, tmp)
    inc = [f"-I{src / 'ggml/include'}", f"-I{src / 'ggml/src'}"]
    gguf_obj = tmp / "gguf.o"
    cmd = ["g++", "-O2", "-std=c++17", "-DNDEBUG", "-fPIC", "-c", str(src / "ggml/src/gguf.cpp"), *inc]
    subprocess.run([*cmd, "-o", str(gguf_obj)], check=True)
    objs = [str(tmp / n) for n in ("ggml-quants.c.o", "ggml.c.o", "ggml-threading.cpp.o")] + [str(gguf_obj)]
    subprocess.run(["g++", "-shared", "-o", str(tmp / "libggml_gguf.so"), *objs], check=True)
    lib = ctypes.CDLL(str(tmp / "libggml_gguf.so"), mode=os.RTLD_LAZY)
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    for name in ("gguf_get_n_tensors", "gguf_get_n_kv", "gguf_get_data_offset", "gguf_get_alignment"):
        getattr(lib, name).restype, getattr(lib, name).argtypes = ctypes.c_int64, [ctypes.c_void_p]
    for name in ("gguf_get_tensor_offset", "gguf_get_tensor_size", "gguf_get_tensor_type"):
        getattr(lib, name).restype = ctypes.c_int64
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    return lib


def check(lib, path: Path, alignment: int) -> None:
    ts = tensors()
    layout = write_gguf(path, "llama", ts, METADATA, alignment)
    ctx = lib.gguf_init_from_file(str(path).encode(), InitParams(True, None))
    assert ctx, "llama.cpp refused the file"
    raw = path.read_bytes()
    assert len(raw) == layout.file_size
    assert lib.gguf_get_n_tensors(ctx) == len(ts) and lib.gguf_get_alignment(ctx) == alignment
    assert lib.gguf_get_data_offset(ctx) == layout.data_offset
    for i, t in enumerate(ts):
        offset = layout.data_offset + lib.gguf_get_tensor_offset(ctx, i)
        assert lib.gguf_get_tensor_name(ctx, i).decode() == t.name
        assert lib.gguf_get_tensor_type(ctx, i) == int(t.ggml_type)
        assert offset == layout.tensor_offsets[t.name] and lib.gguf_get_tensor_size(ctx, i) == t.nbytes
        assert raw[offset : offset + t.nbytes] == t.data.tobytes()
    print(f"alignment {alignment}: llama.cpp reads {len(ts)} tensors and {lib.gguf_get_n_kv(ctx)} KVs as predicted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = load(args.llama_cpp, Path(tmp))
        for alignment in (32, 64):
            check(lib, Path(tmp) / f"model-{alignment}.gguf", alignment)


if __name__ == "__main__":
    main()
