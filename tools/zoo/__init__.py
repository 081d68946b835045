"""Reference model zoo: FashionMNIST LeNets (trained) and a random ResNet-50-sized CNN, as ONNX.

``build(name)`` trains/exports/verifies and caches an entry; ``load(name)`` returns a cached
entry without importing torch.  Torch model classes (``evonnx.tools.zoo.models``) load lazily.
"""

from .build import (
    MAX_IR_VERSION,
    OPSET,
    RECIPES,
    ZOO_VERSION,
    Recipe,
    ZooEntry,
    available,
    build,
    default_dir,
    export_onnx,
    load,
    ort_predict,
    ort_session,
    train_model,
    train_split,
    verify_onnx,
)
from .data import Dataset, load_dataset, load_digits28, load_fashion_mnist, read_idx

_LAZY_MODELS = ("MODELS", "count_params", "lenet300", "lenet5", "resnet50ish", "LeNet300", "LeNet5", "ResNet50ish")

__all__ = [
    "MAX_IR_VERSION",
    "OPSET",
    "RECIPES",
    "ZOO_VERSION",
    "Recipe",
    "ZooEntry",
    "available",
    "build",
    "default_dir",
    "export_onnx",
    "load",
    "ort_predict",
    "ort_session",
    "train_model",
    "train_split",
    "verify_onnx",
    "Dataset",
    "load_dataset",
    "load_digits28",
    "load_fashion_mnist",
    "read_idx",
    *_LAZY_MODELS,
]


def __getattr__(name: str):
    """Import torch-backed model definitions on first use."""
    if name in _LAZY_MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
