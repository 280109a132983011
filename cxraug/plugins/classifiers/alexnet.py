"""AlexNet: Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks", NeurIPS 2012; torchvision's single-tower variant is from Krizhevsky, "One weird trick for
parallelizing convolutional neural networks", arXiv:1404.5997 (2014).

Fine-tuned from ImageNet with its last layer replaced, as in the StyleGAN2 augmentation study on
COVIDx (three labels: normal, pneumonia, COVID-19).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import AlexNet, AlexNet_Weights, WeightsEnum

from cxraug import hookimpl
from cxraug.plugins.classifiers._common import (
    FreezeOptions,
    TorchvisionClassifier,
    TransferNet,
)


class AlexNetOptions(FreezeOptions):
    """Options of the ``alexnet`` classifier; ``freeze_backbone`` fixes the convolutional ``features``."""


class AlexNetClassifier(TorchvisionClassifier[AlexNetOptions]):
    """torchvision AlexNet with its final Linear(4096, 1000) replaced by Linear(4096, num_classes).

    ``backbone`` is ``features`` + ``avgpool`` (256x6x6 at 224); ``head`` is flatten + the original
    dropout/dense classifier with the new last layer. Default learning rate 1e-4 (Adam, fine-tuning).
    """

    name: ClassVar[str] = "alexnet"
    description: ClassVar[str] = "AlexNet (Krizhevsky et al. 2012) fine-tuned from ImageNet, new last layer"
    Options: ClassVar[type[AlexNetOptions]] = AlexNetOptions
    default_lr: ClassVar[float] = 1e-4
    #: ImageNet weights file: alexnet-owt-7be5be79.pth.
    imagenet_weights: ClassVar[WeightsEnum] = AlexNet_Weights.IMAGENET1K_V1
    head_key: ClassVar[str] = "classifier.6.weight"

    def make(self, num_classes: int, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        return AlexNet(num_classes=num_classes)

    def assemble(self, full: nn.Module, num_classes: int) -> nn.Module:
        assert isinstance(full, AlexNet)
        classifier = full.classifier
        last = classifier[-1]
        assert isinstance(last, nn.Linear)
        classifier[-1] = nn.Linear(last.in_features, num_classes)
        return TransferNet(
            nn.Sequential(full.features, full.avgpool),
            nn.Sequential(nn.Flatten(), classifier),
            frozen=self.options.freeze_backbone,
        )


@hookimpl
def register_classifiers(register):
    register(AlexNetClassifier)
