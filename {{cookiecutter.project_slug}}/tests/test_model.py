import torch

from {{ cookiecutter.package_name }}.config import ModelConfig
from {{ cookiecutter.package_name }}.model import build_model


def test_forward_shape_and_gradients():
    model = build_model(ModelConfig())
    logits = model(torch.rand(4, 1, 8, 8))
    assert tuple(logits.shape) == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
