"""The boundary: what the user gives (a module, data in several forms) checked and prepared once,
with one actionable sentence for anything that cannot be used."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from mpq.device import model_device, resolve_device
from mpq.errors import MpqError, first_line
from mpq.inputs.adapter import adapt
from mpq.inputs.data import Dataset, named_inputs
from mpq.inputs.onnx_model import is_onnx, load_onnx
from mpq.inputs.graph import PreparedModel, module_calls_visible, prepare_model
from mpq.inputs.split import EVAL_SPLIT, held_out_split

EXAMPLE_BATCH = 2


def as_dataset(data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.Tensor):
        return Dataset(x=data)
    if isinstance(data, Mapping):
        return named_inputs(data, "the data")
    if isinstance(data, tuple) and len(data) == 2:
        if isinstance(data[0], Mapping):
            return named_inputs(data[0], "the data", y=data[1])
        return Dataset(x=data[0], y=data[1])
    raise MpqError(
        "data must be an mpq.Dataset, a tensor of inputs, a dict of named inputs, or an (x, y) tuple, not "
        f"{type(data).__name__}"
    )


def _check_finite_weights(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise MpqError(
                f"model tensor {name} contains NaN or Inf: load trained weights (or fix training) before quantizing"
            )


def _check_output(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), module_calls_visible():
        output = model(example)
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        what = (
            type(output).__name__
            if not isinstance(output, torch.Tensor)
            else f"a tensor of shape {tuple(output.shape)}"
        )
        raise MpqError(
            f"the model returns {what}: return one tensor shaped [batch, outputs...] (logits or embeddings), or wrap "
            "it in mpq.ModelAdapter(model, field=NAME)"
        )
    if output.is_floating_point() and not torch.isfinite(output).all():
        raise MpqError(
            "the model's outputs on the data contain NaN or Inf: check the data's scale and the model's weights"
        )
    return output


@contextmanager
def _model_runs_on(data: Dataset):
    """What the model raises on the data becomes one sentence about the data's shape and type."""
    try:
        yield
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as exc:
        first = first_line(exc)
        hint = "export it with a dynamic batch dimension (dynamic_shapes) or " if "Guard failed" in first else ""
        raise MpqError(
            f"the model cannot run on the data ({_described(data)}): {first}; "
            f"{hint}give data shaped and typed as the model expects"
        ) from None


def _described(data: Dataset) -> str:
    if data.input_names:
        return f"inputs {', '.join(data.input_names)} of shape {tuple(data.x.shape[2:])}, dtype {data.x.dtype}"
    return f"inputs of shape {tuple(data.x.shape[1:])}, dtype {data.x.dtype}"


def check_data_fits(prepared: PreparedModel, data: Dataset) -> Dataset:
    """`data` (e.g. held-out evaluation data) checked against an already prepared model as the first data was."""
    if data.input_names != prepared.input_names:
        raise MpqError(
            f"this data holds inputs {', '.join(data.input_names) or 'x'} but the model was prepared with "
            f"{', '.join(prepared.input_names) or 'one tensor x'}: give the same inputs"
        )
    with _model_runs_on(data):
        output = _check_output(prepared.folded, data.x[:EXAMPLE_BATCH].to(prepared.device))
    if not prepared.outputs.embeddings:
        check_labels(output, data.y)
    return data


def check_labels(output: torch.Tensor, labels: torch.Tensor | None) -> None:
    """Labels are class indices of the model's outputs: 0 .. outputs - 1 along dimension 1."""
    if labels is None:
        return
    if output.dim() != 2:
        raise MpqError(
            f"the model's outputs are shaped {list(output.shape)} per batch (a prediction per position) but labels y "
            "hold one class per sample: give a model whose outputs are [batch, classes], or drop y to compare with "
            "the model's own predictions"
        )
    classes, top = output.shape[1], int(labels.max())
    if top >= classes:
        raise MpqError(
            f"labels y reach {top} but the model has {classes} outputs: give class indices from 0 to {classes - 1}, "
            "or drop y to use the model's own predictions"
        )


def as_prepared(model, data: Dataset, embeddings: bool = False, device: torch.device | None = None) -> PreparedModel:
    """The model checked and prepared on `device` (a torch.device from mpq.device.resolve_device; None: where
    its parameters are). The user's model is never moved: a copy is, when it is elsewhere. Give the stages
    `data.to(prepared.device)`."""
    if isinstance(model, PreparedModel):
        return model
    return _checked_and_prepared(model, data, embeddings, device)[0]


def _checked_and_prepared(model, data: Dataset, embeddings: bool, device: torch.device | None) -> tuple:
    """(the prepared model, how many dimensions its output has): the one run that checks the model's outputs."""
    if is_onnx(model):
        model = load_onnx(model)
    if not isinstance(model, nn.Module):
        raise MpqError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if device is not None and model_device(model) != device:
        model = (model if getattr(model, "owned", False) else copy.deepcopy(model)).to(device)
    _check_finite_weights(model)
    example = data.x[:EXAMPLE_BATCH].to(model_device(model))
    with _model_runs_on(data):
        model = adapt(model, example, data.input_names)  # named inputs, structured outputs: one tensor in, one out
        prepared = prepare_model(model, example, embeddings)  # works on an eval-mode copy
        output = _check_output(prepared.folded, example)
    if not prepared.outputs.embeddings:
        check_labels(output, data.y)
    if not prepared.graph.layers:
        raise MpqError(
            "the model has no Conv1d, Conv2d or Linear layer called as a module, so there is nothing to quantize"
        )
    return prepared, output.dim()


def prepared_on(model, data: Dataset, embeddings: bool = False, device=None) -> tuple[PreparedModel, Dataset]:
    """as_prepared on the device a verb's `device=` names (mpq.device.resolve_device; None: where the model's
    parameters are), and the data moved there. An already prepared model stays where it is."""
    inputs = prepare_inputs(model, data, embeddings, device)
    return inputs.prepared, inputs.fit


@dataclass(frozen=True)
class Inputs:
    """The user's model and data past the boundary, checked once, on one device: the stages take these. The
    data's fingerprints are computed once (Dataset.fingerprint keeps its digest)."""

    prepared: PreparedModel
    fit: Dataset  # sensitivity and calibration fit on it
    held_out: Dataset | None = None  # verification measures on it; None: on `fit` (in-sample)
    output_dims: int | None = None  # of the model's output ([batch, classes]: 2) from the run that checked it


def prepare_inputs(model, data, embeddings: bool = False, device=None) -> Inputs:
    """The one preparation step: `data` as a Dataset, the model checked and prepared on the device `device=`
    names (mpq.device.resolve_device; None: where the model's parameters are), the data moved there."""
    data = as_dataset(data)
    if isinstance(model, PreparedModel):  # checked when it was prepared
        return Inputs(model, data.to(model.device))
    chosen = resolve_device(device, model if isinstance(model, nn.Module) else None, "device=")
    prepared, dims = _checked_and_prepared(model, data, embeddings, chosen)
    return Inputs(prepared, data.to(prepared.device), output_dims=dims)


def with_held_out(inputs: Inputs, eval_data, eval_split: float = EVAL_SPLIT) -> Inputs:
    """`inputs` with the data to measure on: `eval_data` (checked) when given, else a seeded `eval_split` of the
    fit data held out by group (mpq.inputs.split.held_out_split; then the fit data is the rest), else none."""
    fit, held_out = split_for_measurement(inputs.prepared, inputs.fit, eval_data, eval_split)
    return replace(inputs, fit=fit, held_out=held_out)


def names_embeddings(model, names) -> bool:
    """Whether `names` include an nn.Embedding of `model` (then embeddings are layers: a plan quantizes them)."""
    modules = dict(model.named_modules()) if isinstance(model, nn.Module) else {}
    return any(isinstance(modules.get(name), nn.Embedding) for name in names)


def check_batch_size(value, name: str = "batch_size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MpqError(f"{name}={value!r} must be a whole number of samples, 1 or more")
    return value


def check_eval_split(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise MpqError(f"eval_split={value!r} must be a fraction from 0 (measure in-sample) up to, not including, 1")
    return float(value)


def _check_same_shape(data: Dataset, held: Dataset) -> None:
    """MpqError unless the measurement data's samples look like the calibration data's (shape, named inputs)."""
    ours, theirs = (tuple(data.x.shape[1:]), data.input_names), (tuple(held.x.shape[1:]), held.input_names)
    if ours != theirs:
        raise MpqError(
            f"the data measured on (--eval-data, eval_data) has samples of shape {list(theirs[0])}, the data fitted "
            f"on (--data) {list(ours[0])}{' (named inputs differ)' if ours[1] != theirs[1] else ''}: give both in "
            "one shape (the same --seq-len, image size, or named inputs)"
        )


def split_for_measurement(
    prepared: PreparedModel, data: Dataset, eval_data, eval_split: float = EVAL_SPLIT
) -> tuple[Dataset, Dataset | None]:
    """The data to fit on (sensitivity, calibration) and the data to measure on: `eval_data` when given, else a
    seeded `eval_split` of `data` held out by group (mpq.inputs.split.held_out_split); None: measure in-sample."""
    data = data.to(prepared.device)
    if eval_data is not None:
        held = check_data_fits(prepared, as_dataset(eval_data))
        _check_same_shape(data, held)
        return data, held.to(prepared.device)
    split = held_out_split(data, check_eval_split(eval_split))
    return (data, None) if split is None else split
