import pytest
import torch
from torch import nn


class TinyConvNet(nn.Module):
    """conv -> BN -> tanh -> conv -> tanh -> linear: small enough for exact Hessians."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, stride=2)
        self.fc = nn.Linear(2 * 2 * 2, 4)

    def forward(self, x):
        x = torch.tanh(self.bn1(self.conv1(x)))
        x = torch.tanh(self.conv2(x))
        return self.fc(x.flatten(1))


@pytest.fixture
def tiny_model() -> TinyConvNet:
    torch.manual_seed(0)
    model = TinyConvNet()
    with torch.no_grad():
        model.bn1.running_mean.copy_(torch.tensor([0.1, -0.2, 0.05]))
        model.bn1.running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
        model.bn1.weight.copy_(torch.tensor([1.2, 0.7, -0.9]))
        model.bn1.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    return model.eval()


@pytest.fixture
def tiny_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(24, 2, 6, 6, generator=generator)
    y = torch.randint(0, 4, (24,), generator=generator)
    return x, y


@pytest.fixture(scope="session")
def default_model_cache(tmp_path_factory):
    """One mpq cache for the slow tests of the default model: the first to run (test_end_to_end, cold)
    computes the 8-probe sensitivity and measurements, the export tests read them back."""
    return tmp_path_factory.mktemp("default-model-cache")
