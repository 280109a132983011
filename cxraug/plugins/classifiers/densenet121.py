"""DenseNet-121: Huang, Liu, van der Maaten and Weinberger, "Densely Connected Convolutional
Networks", CVPR 2017 (arXiv:1608.06993).

The standard chest X-ray backbone since CheXNet (Rajpurkar et al., "CheXNet: Radiologist-Level
Pneumonia Detection on Chest X-Rays with Deep Learning", arXiv:1711.05225, 2017): ImageNet weights,
the final classifier replaced, the whole network fine-tuned. The recommended default classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import DenseNet, DenseNet121_Weights, WeightsEnum, densenet121

from cxraug import hookimpl
from cxraug.interfaces import Classifier, PluginOptions
from cxraug.plugins.classifiers._common import (
    FreezeOptions,
    TransferNet,
    check_num_classes,
    fix_densenet_keys,
    torchvision_model,
    typed_options,
)


class DenseNet121Options(FreezeOptions):
    """Options of the ``densenet121`` classifier."""


class DenseNet121Classifier(Classifier):
    """torchvision DenseNet-121 with its Linear(1024, 1000) classifier replaced by Linear(1024, num_classes).

    ``backbone`` is ``features`` (1024x7x7 at 224, ending with the last batch norm); ``head`` is
    ReLU, global average pooling and the new Linear, as in torchvision's forward. Default learning
    rate 1e-4 (Adam, fine-tuning).
    """

    name: ClassVar[str] = "densenet121"
    description: ClassVar[str] = (
        "DenseNet-121 (Huang et al. 2017), the CheXNet backbone, fine-tuned; recommended"
    )
    Options: ClassVar[type[PluginOptions]] = DenseNet121Options
    input_size: ClassVar[int] = 224
    default_lr: ClassVar[float] = 1e-4
    pretrained_by_default: ClassVar[bool] = True
    #: The torchvision weights used when pretrained (file densenet121-a639ec97.pth).
    imagenet_weights: ClassVar[WeightsEnum] = DenseNet121_Weights.IMAGENET1K_V1

    def build(self, num_classes: int, *, pretrained: bool, weights: Path | None) -> nn.Module:
        check_num_classes(num_classes, self.name)
        opts = typed_options(self, DenseNet121Options)

        def make(n: int, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
            return densenet121(weights=None, num_classes=n)

        full = torchvision_model(
            self.name,
            make,
            self.imagenet_weights,
            pretrained=pretrained,
            weights=weights,
            head_key="classifier.weight",
            fix_keys=fix_densenet_keys,
        )
        assert isinstance(full, DenseNet)
        head = nn.Sequential(
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(full.classifier.in_features, num_classes),
        )
        return TransferNet(full.features, head, frozen=opts.freeze_backbone)


@hookimpl
def register_classifiers(register):
    register(DenseNet121Classifier)
