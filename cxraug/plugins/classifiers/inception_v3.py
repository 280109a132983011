"""Inception v3: Szegedy, Vanhoucke, Ioffe, Shlens and Wojna, "Rethinking the Inception
Architecture for Computer Vision", CVPR 2016 (arXiv:1512.00567).

Transfer learning as in the conditional-GAN augmentation study: the ImageNet network cut at Keras'
``mixed7``, flattened, and a new Dense(1024)-ReLU-Dense(64)-ReLU-Dense(num_classes) head.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import Inception3, Inception_V3_Weights, WeightsEnum

from cxraug import hookimpl
from cxraug.plugins.classifiers._common import (
    ImageNetInput,
    TorchvisionClassifier,
    TransferHeadOptions,
    TransferNet,
    dense_head,
)

#: Channels, height and width of ``mixed7`` (torchvision's ``Mixed_6e``) at 299x299.
TRUNK_SHAPE: tuple[int, int, int] = (768, 17, 17)
#: torchvision's modules up to ``Mixed_6e``, the last 17x17 block (Keras' mixed0-2 are Mixed_5b-d,
#: mixed3 is Mixed_6a, mixed4-7 are Mixed_6b-e); the names keep the backbone's keys the same.
TRUNK_MODULES: tuple[str, ...] = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
)


class InceptionV3Options(TransferHeadOptions):
    """Options of the ``inception_v3`` classifier."""


class InceptionV3Classifier(TorchvisionClassifier[InceptionV3Options]):
    """torchvision Inception3 up to ``Mixed_6e`` (= Keras ``mixed7``) + the dense head.

    ``backbone`` outputs 768x17x17 at 299, so the head's first layer is Linear(221952, 1024): about
    227 M weights (0.9 GB in float32, three times that with Adam's state). That is what was published;
    it is kept as is. The backbone is frozen by default; default learning rate 1e-5 (Adam).

    The ImageNet weights (ported from Google's) expect inputs scaled to [-1, 1], which torchvision
    does with ``transform_input``; the trunk here takes the modules without that step, so the
    input is normalised with mean = std = 0.5 instead, to the same effect. No auxiliary classifier.
    """

    name: ClassVar[str] = "inception_v3"
    description: ClassVar[str] = "Inception v3 (Szegedy et al. 2016) to mixed7 + 1024-64 dense head"
    Options: ClassVar[type[InceptionV3Options]] = InceptionV3Options
    input_size: int = 299
    default_lr: ClassVar[float] = 1e-5
    #: ImageNet weights file: inception_v3_google-0cc3c7bd.pth.
    imagenet_weights: ClassVar[WeightsEnum] = Inception_V3_Weights.IMAGENET1K_V1
    head_key: ClassVar[str] = "fc.weight"

    def make(self, num_classes: int, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        # Published files carry the auxiliary classifier; a state_dict saved without it fits too.
        aux = state is not None and any(k.startswith("AuxLogits.") for k in state)
        return Inception3(
            num_classes=num_classes, aux_logits=aux, transform_input=False, init_weights=state is None
        )

    def assemble(self, full: nn.Module, num_classes: int) -> nn.Module:
        assert isinstance(full, Inception3)
        opts = self.options
        trunk = nn.Sequential(OrderedDict((name, getattr(full, name)) for name in TRUNK_MODULES))
        c, h, w = TRUNK_SHAPE
        return TransferNet(
            trunk,
            dense_head(c * h * w, num_classes, opts.dropout),
            frozen=opts.freeze_backbone,
            normalize=ImageNetInput(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        )


@hookimpl
def register_classifiers(register):
    register(InceptionV3Classifier)
