"""Model and data specs: files, packages, factories with arguments, state dicts, exports, loaders."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mpq
from mpq.errors import MpqError
from mpq.inputs.specs import load_data_spec, load_model_spec, parse_model_args
from tests.helpers import USER_MODELS
from tests.user_models import MLP, mlp


def test_file_spec_calls_the_factory_with_typed_model_args():
    assert parse_model_args(["width=12", "depth=3", "bias=false", "name=x"]) == {
        "width": 12,
        "depth": 3,
        "bias": False,
        "name": "x",
    }
    assert parse_model_args(["rate=0.5"]) == {"rate": 0.5}
    model = load_model_spec(f"{USER_MODELS}:mlp", parse_model_args(["width=12", "depth=3", "bias=false"]))
    assert type(model).__name__ == "MLP" and not model.training
    assert [m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Linear)] == [12, 12, 12, 4]
    assert model.layers[0][0].bias is None


def test_package_spec_and_errors_that_say_what_to_do():
    model = load_model_spec("tests.user_models:mlp")
    assert isinstance(model, MLP)
    with pytest.raises(MpqError, match="cannot import 'no_such_pkg.models'"):
        load_model_spec("no_such_pkg.models:net")
    with pytest.raises(MpqError, match="not a torch.nn.Module"):
        load_model_spec(f"{USER_MODELS}:NOT_A_MODULE")
    with pytest.raises(MpqError, match="--model-arg"):
        load_model_spec(f"{USER_MODELS}:mlp", {"colour": 3})
    with pytest.raises(MpqError, match="key=value"):
        parse_model_args(["width"])


def test_state_dict_with_factory_is_loaded_weights_only(tmp_path):
    trained = mlp()
    with torch.no_grad():
        trained.head.weight.fill_(0.25)
    torch.save(trained.state_dict(), tmp_path / "w.pth")
    model = load_model_spec(f"{USER_MODELS}:mlp", {}, tmp_path / "w.pth")
    assert torch.equal(model.head.weight, torch.full((4, 8), 0.25))
    with pytest.raises(MpqError, match="does not fit the model"):
        load_model_spec(f"{USER_MODELS}:mlp", {"width": 5}, tmp_path / "w.pth")
    torch.save({"net": nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module: refused by weights_only
    with pytest.raises(MpqError, match="weights_only=True"):
        load_model_spec(f"{USER_MODELS}:mlp", {}, tmp_path / "pickled.pth")


def test_torch_export_program_becomes_quantizable_modules(tmp_path):
    model = mlp()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(4, 6),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "mlp.pt2")
    loaded = load_model_spec(str(tmp_path / "mlp.pt2"))
    linears = [n for n, m in loaded.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["layers.0.0", "layers.1.0", "head"]
    x = torch.randn(9, 6)
    assert torch.equal(loaded(x), model(x))
    data = (torch.randn(16, 6), torch.randint(0, 4, (16,)))
    options = dict(metric="hessian", max_probes=3, min_probes=2, cache_dir=False, progress=False)
    exported, original = mpq.analyze(loaded, data, **options), mpq.analyze(model, data, **options)
    assert list(exported.layers) == list(original.layers)
    assert [s.hessian_trace for s in exported.layers.values()] == [s.hessian_trace for s in original.layers.values()]
    torch.export.save(torch.export.export(model, (torch.randn(4, 6),)), tmp_path / "static.pt2")
    with pytest.raises(MpqError, match="export it with a dynamic batch dimension"):
        mpq.analyze(load_model_spec(str(tmp_path / "static.pt2")), data, **options)


class _OpensAFile:
    """Unpickling it opens (creates) a file: what a crafted .pt2 could do with torch.load(weights_only=False)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("member", ["data/sample_inputs/model.pt", "data/weights/weight_0"])
def test_a_pt2_whose_pickles_run_code_is_refused_before_anything_is_unpickled(tmp_path, member):
    import io
    import zipfile

    program = torch.export.export(mlp(), (torch.randn(4, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "clean.pt2")
    marker = tmp_path / "ran"
    payload = io.BytesIO()
    torch.save(_OpensAFile(marker), payload)
    with zipfile.ZipFile(tmp_path / "clean.pt2") as clean, zipfile.ZipFile(tmp_path / "bad.pt2", "w") as bad:
        for info in clean.infolist():
            data = clean.read(info.filename)
            if info.filename.endswith(member):
                data = payload.getvalue()
            elif member.startswith("data/weights") and info.filename.endswith("model_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            bad.writestr(info, data)
    with pytest.raises(MpqError, match="would be unpickled"):
        load_model_spec(str(tmp_path / "bad.pt2"))
    assert not marker.exists()
    assert isinstance(load_model_spec(str(tmp_path / "clean.pt2")), nn.Module)


def test_torchscript_is_refused_with_what_to_use_instead(tmp_path):
    torch.jit.save(torch.jit.script(mlp()), tmp_path / "mlp.pt")
    with pytest.raises(MpqError, match="TorchScript.*--weights state_dict.pth, or a torch.export program"):
        load_model_spec(str(tmp_path / "mlp.pt"))
    torch.save(mlp().state_dict(), tmp_path / "sd.pth")
    with pytest.raises(MpqError, match="--model package.module:factory --weights"):
        load_model_spec(str(tmp_path / "sd.pth"))


def test_npz_keeps_integer_token_ids_and_pt_files_load(tmp_path):
    ids = np.arange(24, dtype=np.int32).reshape(3, 8)
    np.savez(tmp_path / "tokens.npz", x=ids)
    data = load_data_spec(str(tmp_path / "tokens.npz"))
    assert data.x.dtype == torch.int64 and data.x[2, 7] == 23 and data.y is None
    torch.save({"x": torch.randn(5, 6, dtype=torch.float64), "y": torch.tensor([0, 1, 2, 3, 0])}, tmp_path / "d.pt")
    data = load_data_spec(str(tmp_path / "d.pt"))
    assert data.x.dtype == torch.float32 and data.y.tolist() == [0, 1, 2, 3, 0]


def test_data_from_a_function_returning_batches():
    data = load_data_spec(f"{USER_MODELS}:token_batches")
    assert data.x.shape == (24, 8) and data.x.dtype == torch.int64 and data.y.shape == (24,)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(10, 3)), batch_size=4)
    from mpq.inputs.data import from_batches

    assert from_batches(loader, "loader").x.shape == (10, 3)


def test_image_folders_with_both_transforms(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "labelled" / label).mkdir(parents=True)
        Image.new("RGB", (40, 30), (255, 0, 127)).save(tmp_path / "labelled" / label / "a.png")
    data = load_data_spec(str(tmp_path / "labelled"), "none")
    assert data.x.shape == (2, 3, 30, 40) and data.y.tolist() == [0, 1]
    assert data.x[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 127 / 255])
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (300, 260), (127, 255, 0)).save(tmp_path / "flat" / "b.jpg", quality=100)
    data = load_data_spec(str(tmp_path / "flat"), "imagenet")
    assert data.x.shape == (1, 3, 224, 224) and data.y is None
    assert float(data.x[0, 0].mean()) == pytest.approx(0.0, abs=0.02)
    assert float(data.x[0, 1].mean()) == pytest.approx(1.0, abs=0.02)


def test_torchvision_transform_normalizes_by_the_imagenet_mean_and_std(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (300, 260), (127, 255, 0)).save(tmp_path / "flat" / "b.png")
    data = load_data_spec(str(tmp_path / "flat"), "torchvision")
    assert data.x.shape == (1, 3, 224, 224)
    expected = [(127 / 255 - 0.485) / 0.229, (1.0 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    assert data.x[0, :, 100, 100].tolist() == pytest.approx(expected, abs=1e-5)
