"""Measured latencies as a CSV table: one row per layer shape, batch and (weight bits, activation bits).

    # device: AMD EPYC (1 threads), torch 2.13.0+cpu
    kind,in_channels,out_channels,kernel,stride,groups,input_hw,output_hw,batch,weight_bits,act_bits,latency_s,backend
    conv2d,3,32,3x3,2x2,1,224x224,112x112,1,8,8,9.02949996e-05,torch.ao quantized int8 (x86)
    linear,1280,1000,,,1,,,1,8,float,0.000893092,aten._weight_int8pack_mm

A layer of a model matches a row when every key column equals the layer's (LayerKey below, measured on
the real module: channels, kernel, stride, groups, per-sample input and output spatial sizes) and the
row's batch and widths are the ones asked for. `act_bits` `float` (or empty/`none`) is a float input;
`weight_bits` 32 with a float input is the FP32 layer (a reference: no candidate width is 32).
Lines starting with `#` are comments; `# device: ...` names the device. Extra columns are kept for
people (e.g. `backend`, the kernel that ran) and ignored here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

from mpq.cost.layer_cost import Choice
from mpq.errors import MpqError
from mpq.files import check_readable_file, write_text_atomic
from mpq.inputs.graph import LayerInfo
from mpq.quant.widths import parse_width

KEY_COLUMNS = ("kind", "in_channels", "out_channels", "kernel", "stride", "groups", "input_hw", "output_hw", "batch")
COLUMNS = KEY_COLUMNS + ("weight_bits", "act_bits", "latency_s")
FLOAT_WIDTH = 32  # weight_bits of an FP32 row
DEVICE_PREFIX = "# device:"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class LayerKey:
    """What a layer's latency depends on: its operation, channels, kernel, stride, groups, the per-sample
    input and output sizes besides channels (a Linear's leading token dimensions), and the batch."""

    kind: str
    in_channels: int
    out_channels: int
    kernel: str
    stride: str
    groups: int
    input_hw: str
    output_hw: str
    batch: int

    def describe(self) -> str:
        parts = [self.kind, f"{self.in_channels}->{self.out_channels}"]
        parts += [f"kernel {self.kernel}"] if self.kernel else []
        parts += [f"stride {self.stride}"] if self.stride else []
        parts += [f"groups {self.groups}"] if self.groups != 1 else []
        parts += [f"input {self.input_hw}"] if self.input_hw else []
        return " ".join(parts + [f"batch {self.batch}"])


def layer_key(layer: LayerInfo, batch: int) -> LayerKey:
    """The table key of a measured layer at `batch` samples."""
    if layer.kind == "linear":
        return LayerKey(
            "linear",
            layer.weight_shape[1],
            layer.weight_shape[0],
            "",
            "",
            1,
            _dims(layer.input_shape[:-1]),
            _dims(layer.output_shape[:-1]),
            batch,
        )
    if layer.kind == "embedding":
        return LayerKey(
            "embedding",
            layer.weight_shape[0],
            layer.weight_shape[1],
            "",
            "",
            1,
            _dims(layer.input_shape),
            _dims(layer.output_shape[:-1]),
            batch,
        )
    return LayerKey(
        kind=layer.kind,
        in_channels=layer.input_shape[0],
        out_channels=layer.weight_shape[0],
        kernel=_dims(layer.weight_shape[2:]),
        stride=_dims(layer.stride),
        groups=layer.groups,
        input_hw=_dims(layer.input_shape[1:]),
        output_hw=_dims(layer.output_shape[1:]),
        batch=batch,
    )


@dataclass(frozen=True)
class LatencyRow:
    key: LayerKey
    choice: Choice
    latency_s: float
    backend: str = ""


def _act_text(choice: Choice) -> str:
    return str(choice.act_bits) if choice.act_bits else "float"


def table_text(rows: list[LatencyRow], comments: list[str]) -> str:
    """The CSV text of `rows`, after `comments` (each written as a `# ` line)."""
    out = io.StringIO()
    for line in comments:
        out.write(f"# {line}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS + ("backend",))
    for r in rows:
        k = r.key
        writer.writerow(
            [
                k.kind,
                k.in_channels,
                k.out_channels,
                k.kernel,
                k.stride,
                k.groups,
                k.input_hw,
                k.output_hw,
                k.batch,
                r.choice.weight_bits,
                _act_text(r.choice),
                f"{r.latency_s:.9g}",
                r.backend,
            ]
        )
    return out.getvalue()


def write_latency_table(path: "str | Path", rows: list[LatencyRow], comments: list[str]) -> None:
    write_text_atomic(path, table_text(rows, comments))


def _int(where: str, column: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise MpqError(f"{where}: {column} {text!r} is not a whole number") from None
    if value < 1:
        raise MpqError(f"{where}: {column} {text!r} must be 1 or more")
    return value


def _row(where: str, record: dict[str, str]) -> LatencyRow:
    cell = {c: (record.get(c) or "").strip() for c in COLUMNS}
    if not cell["kind"]:
        raise MpqError(f"{where}: kind is empty (conv2d, depthwise_conv2d, conv1d, linear ...)")
    key = LayerKey(
        kind=cell["kind"],
        in_channels=_int(where, "in_channels", cell["in_channels"]),
        out_channels=_int(where, "out_channels", cell["out_channels"]),
        kernel=cell["kernel"],
        stride=cell["stride"],
        groups=_int(where, "groups", cell["groups"] or "1"),
        input_hw=cell["input_hw"],
        output_hw=cell["output_hw"],
        batch=_int(where, "batch", cell["batch"]),
    )
    weight_bits = (
        FLOAT_WIDTH
        if cell["weight_bits"] == str(FLOAT_WIDTH)
        else parse_width(cell["weight_bits"], f"{where}: weight_bits")
    )
    act = cell["act_bits"].lower()
    act_bits = None if act in ("", "none", "float") else parse_width(cell["act_bits"], f"{where}: act_bits")
    try:
        latency = float(cell["latency_s"])
    except ValueError:
        raise MpqError(f"{where}: latency_s {cell['latency_s']!r} is not a number of seconds") from None
    if not math.isfinite(latency) or latency < 0:
        raise MpqError(f"{where}: latency_s {cell['latency_s']!r} must be a finite number of seconds, 0 or more")
    return LatencyRow(key, Choice(weight_bits, act_bits), latency, (record.get("backend") or "").strip())


def _data_lines(path: Path) -> tuple[list[tuple[int, str]], str]:
    """(line number, text) of the lines that are not comments, and the device named in a comment."""
    check_readable_file(path, "latency table")  # a FIFO would hang the read
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MpqError(f"cannot read latency table {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MpqError(f"{path} is not a text CSV latency table") from None
    lines, device = [], ""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(DEVICE_PREFIX) and not device:
            device = line[len(DEVICE_PREFIX) :].strip()
        if line.strip() and not line.startswith("#"):
            lines.append((number, line))
    return lines, device


@dataclass
class LatencyTable:
    """Latency per (layer key, choice), read from one CSV file; `batch` is the batch it is looked up at."""

    path: str
    device: str
    batch: int
    latencies: dict[tuple[LayerKey, Choice], float]
    sha256: str

    def covers(self, layer: LayerInfo, choice: Choice) -> bool:
        return (layer_key(layer, self.batch), choice) in self.latencies

    def latency_s(self, layer: LayerInfo, choice: Choice) -> float:
        key = layer_key(layer, self.batch)
        if (key, choice) not in self.latencies:
            raise MpqError(
                f"latency table {self.path} has no row for layer {layer.name} ({key.describe()}) at {choice.label()}: "
                "measure this model with `mpq profile --out FILE.csv` or choose widths the table has"
            )
        return self.latencies[key, choice]

    def lacks(self, layer: LayerInfo) -> str:
        return (
            f"latency table {self.path} has no row for layer {layer.name} ({layer_key(layer, self.batch).describe()})"
        )

    def to_json(self) -> dict:
        return {"source": "table", "spec": self.path, "sha256": self.sha256, "device": self.device, "batch": self.batch}

    def describe(self) -> str:
        return f"latency table {self.path}" + (f" ({self.device})" if self.device else "") + f", batch {self.batch}"


def read_latency_table(path: "str | Path", batch: int | None = None) -> LatencyTable:
    """Read a table; `batch` None takes the table's only batch (MpqError when it has several)."""
    path = Path(path)
    lines, device = _data_lines(path)
    if not lines:
        raise MpqError(f"latency table {path} is empty; write one with `mpq profile --out {path}`")
    reader = csv.DictReader([line for _, line in lines])
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise MpqError(
            f"latency table {path} lacks the column(s) {', '.join(missing)}; its header must read {','.join(COLUMNS)}"
        )
    latencies: dict[tuple[LayerKey, Choice], float] = {}
    first_line: dict[tuple[LayerKey, Choice], int] = {}
    for (number, _), record in zip(lines[1:], reader):
        where = f"{path} line {number}"
        row = _row(where, record)
        if (row.key, row.choice) in latencies:
            raise MpqError(
                f"{where}: {row.key.describe()} at {row.choice.label()} repeats line "
                f"{first_line[row.key, row.choice]}; give each once"
            )
        latencies[row.key, row.choice] = row.latency_s
        first_line[row.key, row.choice] = number
    if not latencies:
        raise MpqError(f"latency table {path} has a header but no rows; write one with `mpq profile --out {path}`")
    batches = sorted({key.batch for key, _ in latencies})
    if batch is None and len(batches) > 1:
        raise MpqError(f"latency table {path} has rows for batches {batches}: choose one with --latency-batch")
    chosen = batches[0] if batch is None else batch
    if chosen not in batches:
        raise MpqError(
            f"latency table {path} has no rows for batch {chosen} (it has {batches}): profile at that batch or choose "
            "one of those"
        )
    return LatencyTable(str(path), device, chosen, latencies, hashlib.sha256(path.read_bytes()).hexdigest())
