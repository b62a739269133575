"""Make the GGUF quantization fixtures (tests/data/gguf/*.npz) with llama.cpp's own C code.

Source: the llama.cpp that llama-cpp-python 0.3.36 vendors (its sdist on PyPI, vendor/llama.cpp),
ggml-org/llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f, ggml 0.25.3. Get it with

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp   # then untar

Only the files of ggml-base that quantization needs are compiled (a few seconds), the way ggml-base is
built (no -march, so no FMA contraction on x86-64; NDEBUG as in a release build):

    gcc -O2 -std=gnu11 -DNDEBUG -fPIC -c ggml/src/ggml-quants.c ggml/src/ggml.c -Iggml/include -Iggml/src -I.
    g++ -O2 -DNDEBUG -fPIC -c ggml/src/ggml-threading.cpp -Iggml/include -Iggml/src
    g++ -shared -o libggml_quants.so ggml-quants.o ggml.o ggml-threading.o

(ggml.c includes ggml-version.h, which cmake generates; this script writes a two-line one.) The library
is loaded lazily: ggml.c's calls into ggml-backend are never reached by ggml_quantize_chunk, the function
llama-quantize calls for every tensor (here with no importance matrix, as `llama-quantize` without
--imatrix). Fixtures were made on x86-64 with gcc 12.2.0.

    python tests/data/gguf/make_fixtures.py --llama-cpp /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp

Each fixture file holds `x` (the float32 input matrix, or `x_bf16`: its bfloat16 bits, for inputs that are
bf16 like most released LLM weights) and one uint8 array per GGUF type name: ggml's bytes for that matrix.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# ggml_type enum values (ggml/include/ggml.h) -> (block size, bytes per block)
TYPES = {
    "F16": (1, 1, 2),
    "BF16": (30, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
}


def build_library(src: Path, out_dir: Path) -> Path:
    (out_dir / "ggml-version.h").write_text(
        '#pragma once\n#define GGML_VERSION "0.25.3"\n#define GGML_COMMIT "0c1e570"\n'
    )
    inc = [f"-I{src / 'ggml/include'}", f"-I{src / 'ggml/src'}", f"-I{out_dir}"]
    objs = []
    for name, compiler, extra in [
        ("ggml-quants.c", "gcc", ["-std=gnu11"]),
        ("ggml.c", "gcc", ["-std=gnu11"]),
        ("ggml-threading.cpp", "g++", []),
    ]:
        obj = out_dir / (name + ".o")
        cmd = [compiler, "-O2", "-DNDEBUG", "-fPIC", *extra, "-c", str(src / "ggml/src" / name), *inc, "-o", str(obj)]
        subprocess.run(cmd, check=True)
        objs.append(str(obj))
    lib = out_dir / "libggml_quants.so"
    subprocess.run(["g++", "-shared", "-o", str(lib), *objs], check=True)
    return lib


def load(lib_path: Path):
    lib = ctypes.CDLL(str(lib_path), mode=os.RTLD_LAZY)
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    f.argtypes += [ctypes.c_void_p]
    return f


def ggml_quantize(quantize_chunk, x: np.ndarray, type_name: str) -> np.ndarray:
    """llama.cpp's bytes for float32 matrix x [rows, n] in the named type."""
    ggml_type, block, type_size = TYPES[type_name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, n // block * type_size), dtype=np.uint8)
    written = quantize_chunk(ggml_type, x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert written == out.nbytes, (type_name, written, out.nbytes)
    return out


def special_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows that hit the edge cases: zeros, constants, one value, tiny, huge, ties, sub-blocks of zeros."""
    rows = [
        np.zeros(n),
        np.full(n, 0.5),
        np.full(n, -3.0),
        np.eye(1, n, 7)[0] * 0.25,
        rng.standard_normal(n) * 1e-20,  # below GROUP_MAX_EPS in the K-quants' sub-block searches
        rng.standard_normal(n) * 1e-6,  # fp16 scales go subnormal
        rng.standard_normal(n) * 3e3,
        np.round(rng.standard_normal(n) * 4) / 4,  # many exact ties
        np.abs(rng.standard_normal(n)),  # all positive: the K-quants' min is 0
        -np.abs(rng.standard_normal(n)),
        np.where(np.arange(n) % 64 < 32, 0.0, rng.standard_normal(n)),  # every other 32-block zero
        np.where(np.arange(n) % 16 == 0, 5.0, rng.standard_normal(n) * 0.01),  # one outlier per 16
        rng.integers(-8, 8, n) / 8.0,  # already on a 4-bit grid
        np.sign(rng.standard_normal(n)),
        np.linspace(-1, 1, n),
        rng.standard_normal(n) * np.where(rng.random(n) < 0.01, 100.0, 1.0),
    ]
    return np.stack(rows).astype(np.float32)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def inputs() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(20260122)
    gauss = (rng.standard_normal((8, 512)) * 0.02).astype(np.float32)
    heavy = (rng.standard_t(3, (8, 512)) * 0.05).astype(np.float32)
    heavy[rng.random(heavy.shape) < 0.002] *= 50  # outliers, as in LLM weights
    # a bf16 LLM-like matrix: per-row scale spread, a few outlier channels, the last-row layout of 1536 wide
    llm = rng.standard_normal((6, 1536)) * rng.uniform(0.005, 0.05, (6, 1)) * np.where(rng.random(1536) < 0.01, 8, 1)
    llm_bits = to_bf16_bits(llm.astype(np.float32))
    return {
        "gauss": {"x": gauss},
        "heavy": {"x": heavy},
        "special": {"x": special_rows(rng, 256)},
        "llm_bf16": {"x_bf16": llm_bits},
    }


def fixture_input(arrays) -> np.ndarray:
    """The float32 matrix a fixture stores (as float32 or as bf16 bits)."""
    if "x" in arrays:
        return np.asarray(arrays["x"], dtype=np.float32)
    return (np.asarray(arrays["x_bf16"], dtype=np.uint32) << 16).view(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source folder")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        quantize_chunk = load(build_library(args.llama_cpp, Path(tmp)))
        for name, arrays in inputs().items():
            x = fixture_input(arrays)
            out = dict(arrays)
            for type_name in TYPES:
                out[type_name] = ggml_quantize(quantize_chunk, x, type_name)
            np.savez_compressed(args.out / f"{name}.npz", **out)
            print(name, x.shape, sum(v.nbytes for v in out.values()), "bytes")


if __name__ == "__main__":
    main()
