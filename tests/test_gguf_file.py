"""GGUF files (mpq.export.gguf_file): the predicted size is the written file's size to the byte, and an
independent reader (gguf-py's GGUFReader and dequantize) reads back every tensor's type, shape and values."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from mpq.export.gguf_file import GGUFTensor, gguf_layout, predict_gguf_size, write_gguf
from mpq.quant.gguf import GGMLType, dequantize, quantize

# (name, type, shape): rows whose bytes are not multiples of the alignment, 1-D and 3-D tensors
MIX = [
    ("token_embd.weight", "Q6_K", (40, 512)),
    ("blk.0.attn_q.weight", "Q4_K", (24, 256)),
    ("blk.0.attn_k.weight", "Q8_0", (7, 96)),
    ("blk.0.attn_norm.weight", "F32", (96,)),
    ("blk.0.ffn_up.weight", "Q3_K", (9, 768)),
    ("blk.0.ffn_down.weight", "Q2_K", (5, 256)),
    ("blk.0.ffn_gate.weight", "Q5_K", (3, 512)),
    ("blk.1.attn_q.weight", "Q4_0", (2, 3, 64)),
    ("blk.1.attn_k.weight", "Q4_1", (5, 32)),
    ("blk.1.attn_v.weight", "Q5_0", (3, 160)),
    ("blk.1.attn_output.weight", "Q5_1", (1, 32)),
    ("blk.1.ffn_norm.weight", "F16", (33,)),
    ("output.weight", "BF16", (6, 10)),
]
METADATA = {
    "general.name": "mpq test — ünïcödé",  # multi-byte UTF-8: sizes count bytes, not characters
    "llama.context_length": 2048,
    "llama.rope.freq_base": 10000.0,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.ggml.tokens": ["<s>", "</s>", "héllo", "", "▁world"],
    "tokenizer.ggml.scores": [0.0, -1.5, -2.25, 0.0, -3.0],
    "tokenizer.ggml.token_type": np.array([3, 3, 1, 1, 1], dtype=np.int32),
    "test.negative": -7,
    "test.u64": GGUFValue(2**40, GGUFValueType.UINT64),
    "test.bytes": GGUFValue(b"\x00\x01\x02", GGUFValueType.ARRAY),
}


def tensors(mix=MIX, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for name, type_name, shape in mix:
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        out.append(GGUFTensor(name, GGMLType[type_name], shape, quantize(x, type_name)))
    return out


@pytest.mark.parametrize(
    ("mix", "metadata", "alignment"),
    [
        (MIX, METADATA, 32),
        (MIX, METADATA, 64),
        (MIX[:3], {"general.name": "x"}, 32),
        (MIX[3:4], None, 1),
        ([], METADATA, 32),
    ],
    ids=["all-types", "align-64", "three", "one-f32-align-1", "metadata-only"],
)
def test_predicted_size_is_the_files_size(tmp_path, mix, metadata, alignment):
    ts = tensors(mix)
    path = tmp_path / "model.gguf"
    predicted = predict_gguf_size("llama", [GGUFTensor(t.name, t.ggml_type, t.shape) for t in ts], metadata, alignment)
    layout = write_gguf(path, "llama", ts, metadata, alignment)
    assert os.path.getsize(path) == predicted == layout.file_size
    assert layout.data_offset % alignment == 0
    assert layout.file_size == layout.header_bytes + layout.data_bytes + layout.padding_bytes


def test_reader_reads_back_types_shapes_values_and_metadata(tmp_path):
    ts = tensors()
    path = tmp_path / "model.gguf"
    layout = write_gguf(path, "llama", ts, METADATA)
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == [t.name for t in ts]
    for ours, read in zip(ts, reader.tensors):
        assert read.tensor_type == int(ours.ggml_type)
        assert tuple(int(d) for d in reversed(read.shape)) == ours.shape  # GGUF lists dims innermost first
        assert read.data_offset == layout.tensor_offsets[ours.name]
        np.testing.assert_array_equal(np.asarray(read.data).view(np.uint8).reshape(-1), ours.data.reshape(-1))
        theirs = gguf.quants.dequantize(read.data, read.tensor_type).astype(np.float32).reshape(ours.shape)
        mine = dequantize(ours.data, ours.ggml_type, ours.shape)
        np.testing.assert_array_equal(mine.view(np.uint32), theirs.view(np.uint32))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.name"].contents() == METADATA["general.name"]
    assert fields["llama.context_length"].types == [GGUFValueType.UINT32]
    assert fields["llama.context_length"].contents() == 2048
    assert fields["test.negative"].types == [GGUFValueType.INT32]
    assert fields["test.u64"].contents() == 2**40
    assert fields["tokenizer.ggml.tokens"].contents() == METADATA["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.scores"].types == [GGUFValueType.ARRAY, GGUFValueType.FLOAT32]
    assert fields["tokenizer.ggml.token_type"].types == [GGUFValueType.ARRAY, GGUFValueType.INT32]
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True


def test_alignment_is_recorded_and_read(tmp_path):
    path = tmp_path / "model.gguf"
    layout = write_gguf(path, "llama", tensors(MIX[:4]), {"general.name": "a"}, alignment=64)
    reader = gguf.GGUFReader(path)
    assert reader.alignment == 64
    assert [t.data_offset for t in reader.tensors] == list(layout.tensor_offsets.values())


def test_bad_inputs_are_refused(tmp_path):
    t = tensors(MIX[:1])[0]
    with pytest.raises(ValueError, match="unique"):
        predict_gguf_size("llama", [t, t])
    with pytest.raises(ValueError, match="bytes"):
        gguf_layout("llama", [GGUFTensor(t.name, t.ggml_type, (40, 256), t.data)])
    with pytest.raises(ValueError, match="power of two"):
        predict_gguf_size("llama", [t], alignment=48)
    with pytest.raises(ValueError, match="arrays of arrays"):
        predict_gguf_size("llama", [t], {"nested": GGUFValue([[1], [2]], GGUFValueType.ARRAY)})
    with pytest.raises(ValueError, match="bool, int, float, str"):
        predict_gguf_size("llama", [t], {"nested": [[1], [2]]})
    with pytest.raises(ValueError, match="needs its bytes"):
        write_gguf(tmp_path / "x.gguf", "llama", [GGUFTensor(t.name, t.ggml_type, t.shape)])
