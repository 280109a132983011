"""VGG16: Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv:1409.1556).

Transfer learning as in the conditional-GAN augmentation study: the ImageNet network cut at
``block5_pool``, flattened, and a new Dense(1024)-ReLU-Dense(64)-ReLU-Dense(num_classes) head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import VGG, VGG16_Weights, WeightsEnum, vgg16

from cxraug import hookimpl
from cxraug.plugins.classifiers._common import (
    TorchvisionClassifier,
    TransferHeadOptions,
    TransferNet,
    dense_head,
)

#: Channels, height and width of ``block5_pool`` at 224x224.
TRUNK_SHAPE: tuple[int, int, int] = (512, 7, 7)


class VGG16Options(TransferHeadOptions):
    """Options of the ``vgg16`` classifier."""


class VGG16Classifier(TorchvisionClassifier[VGG16Options]):
    """torchvision VGG16 ``features`` (13 convolutions, ending with block5's max-pool) + the dense head.

    ``backbone`` outputs 512x7x7 at 224; the head's first layer is Linear(25088, 1024). The backbone
    is frozen by default, as published; default learning rate 1e-3 (Adam).
    """

    name: ClassVar[str] = "vgg16"
    description: ClassVar[str] = "VGG16 (Simonyan & Zisserman 2015) to block5_pool + 1024-64 dense head"
    Options: ClassVar[type[VGG16Options]] = VGG16Options
    default_lr: ClassVar[float] = 1e-3
    #: ImageNet weights file: vgg16-397923af.pth.
    imagenet_weights: ClassVar[WeightsEnum] = VGG16_Weights.IMAGENET1K_V1
    head_key: ClassVar[str] = "classifier.6.weight"

    def make(self, num_classes: int, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        return vgg16(weights=None, num_classes=num_classes)

    def assemble(self, full: nn.Module, num_classes: int) -> nn.Module:
        assert isinstance(full, VGG)
        opts = self.options
        c, h, w = TRUNK_SHAPE
        return TransferNet(
            full.features, dense_head(c * h * w, num_classes, opts.dropout), frozen=opts.freeze_backbone
        )


@hookimpl
def register_classifiers(register):
    register(VGG16Classifier)
