"""ResNet-50: He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385).

Transfer learning as in the conditional-GAN augmentation study: the ImageNet network cut at
``conv5_block3_out`` (the last residual block), flattened, and a new
Dense(1024)-ReLU-Dense(64)-ReLU-Dense(num_classes) head.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import ResNet, ResNet50_Weights, WeightsEnum, resnet50

from cxraug import hookimpl
from cxraug.plugins.classifiers._common import (
    TorchvisionClassifier,
    TransferHeadOptions,
    TransferNet,
    dense_head,
)

#: Channels, height and width of ``conv5_block3_out`` (torchvision's ``layer4``) at 224x224.
TRUNK_SHAPE: tuple[int, int, int] = (2048, 7, 7)
#: torchvision's modules up to and including ``layer4``; the names keep the backbone's keys the same.
TRUNK_MODULES: tuple[str, ...] = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNet50Options(TransferHeadOptions):
    """Options of the ``resnet50`` classifier."""


class ResNet50Classifier(TorchvisionClassifier[ResNet50Options]):
    """torchvision ResNet-50 up to ``layer4`` (no global pooling) + the dense head.

    ``backbone`` outputs 2048x7x7 at 224, so the head's first layer is Linear(100352, 1024) (about
    103 M weights, as published). The backbone is frozen by default; default learning rate 1e-4 (Adam).
    Pretrained weights are torchvision's IMAGENET1K_V1 (the original ResNet recipe, like Keras').
    """

    name: ClassVar[str] = "resnet50"
    description: ClassVar[str] = "ResNet-50 (He et al. 2016) to conv5_block3_out + 1024-64 dense head"
    Options: ClassVar[type[ResNet50Options]] = ResNet50Options
    default_lr: ClassVar[float] = 1e-4
    #: ImageNet weights file: resnet50-0676ba61.pth.
    imagenet_weights: ClassVar[WeightsEnum] = ResNet50_Weights.IMAGENET1K_V1
    head_key: ClassVar[str] = "fc.weight"

    def make(self, num_classes: int, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        return resnet50(weights=None, num_classes=num_classes)

    def assemble(self, full: nn.Module, num_classes: int) -> nn.Module:
        assert isinstance(full, ResNet)
        opts = self.options
        trunk = nn.Sequential(OrderedDict((name, getattr(full, name)) for name in TRUNK_MODULES))
        c, h, w = TRUNK_SHAPE
        return TransferNet(
            trunk, dense_head(c * h * w, num_classes, opts.dropout), frozen=opts.freeze_backbone
        )


@hookimpl
def register_classifiers(register):
    register(ResNet50Classifier)
