"""DenseNet-121: Huang, Liu, van der Maaten and Weinberger, "Densely Connected Convolutional
Networks", CVPR 2017 (arXiv:1608.06993).

The standard chest X-ray backbone since CheXNet (Rajpurkar et al., "CheXNet: Radiologist-Level
Pneumonia Detection on Chest X-Rays with Deep Learning", arXiv:1711.05225, 2017): ImageNet weights,
the final classifier replaced, the whole network fine-tuned. The recommended default classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import DenseNet, DenseNet121_Weights, WeightsEnum, densenet121

from cxraug import hookimpl
from cxraug.plugins.classifiers._common import (
    FreezeOptions,
    TorchvisionClassifier,
    TransferNet,
    fix_densenet_keys,
)


class DenseNet121Options(FreezeOptions):
    """Options of the ``densenet121`` classifier."""


class DenseNet121Classifier(TorchvisionClassifier[DenseNet121Options]):
    """torchvision DenseNet-121 with its Linear(1024, 1000) classifier replaced by Linear(1024, num_classes).

    ``backbone`` is ``features`` (1024x7x7 at 224, ending with the last batch norm); ``head`` is
    ReLU, global average pooling and the new Linear, as in torchvision's forward. Default learning
    rate 1e-4 (Adam, fine-tuning).
    """

    name: ClassVar[str] = "densenet121"
    description: ClassVar[str] = (
        "DenseNet-121 (Huang et al. 2017), the CheXNet backbone, fine-tuned; recommended"
    )
    Options: ClassVar[type[DenseNet121Options]] = DenseNet121Options
    default_lr: ClassVar[float] = 1e-4
    #: ImageNet weights file: densenet121-a639ec97.pth.
    imagenet_weights: ClassVar[WeightsEnum] = DenseNet121_Weights.IMAGENET1K_V1
    head_key: ClassVar[str] = "classifier.weight"

    fix_keys = staticmethod(fix_densenet_keys)

    def make(self, num_classes: int, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        return densenet121(weights=None, num_classes=num_classes)

    def assemble(self, full: nn.Module, num_classes: int) -> nn.Module:
        assert isinstance(full, DenseNet)
        head = nn.Sequential(
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(full.classifier.in_features, num_classes),
        )
        return TransferNet(full.features, head, frozen=self.options.freeze_backbone)


@hookimpl
def register_classifiers(register):
    register(DenseNet121Classifier)
