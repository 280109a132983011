"""A small CNN trained from scratch, the kind of classifier used in per-class DCGAN augmentation
studies on chest X-rays: stacked Conv-BatchNorm-ReLU-MaxPool blocks, a dense layer with dropout and
the output layer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from cxraug import hookimpl
from cxraug.errors import OptionsError
from cxraug.interfaces import Classifier, PluginOptions
from cxraug.plugins.classifiers._common import check_num_classes

log = logging.getLogger(__name__)


class CNNOptions(PluginOptions):
    """Options of the ``cnn`` classifier."""

    width: int = Field(32, ge=4, le=256, description="Channels of the first block; each block doubles it.")
    blocks: int = Field(4, ge=1, le=6, description="Conv-BN-ReLU-MaxPool blocks (each halves the size).")
    dense: int = Field(128, ge=8, le=4096, description="Units of the hidden dense layer.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout before the output layer.")
    input_size: int = Field(128, ge=16, le=1024, description="Square size images are resized to.")


class SmallCNN(nn.Module):
    """(B, 1, S, S) in [0, 1] -> blocks -> 4x4 average pool -> dense -> dropout -> logits."""

    def __init__(self, num_classes: int, opts: CNNOptions) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i in range(opts.blocks):
            out = opts.width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        # A fixed 4x4 grid keeps the dense layer's size independent of the input size (8x8 at 128
        # with four blocks), so a different resize does not break the network.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * 16, opts.dense),
            nn.ReLU(inplace=True),
            nn.Dropout(opts.dropout),
            nn.Linear(opts.dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"cnn input must be (B, 1, S, S), got {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(x)))


class CNNClassifier(Classifier[CNNOptions]):
    """A small CNN trained from scratch on 128x128 grayscale input; no ImageNet weights.

    ``input_size`` is 128 unless the option of that name says otherwise (e.g. the native size of a
    small prepared dataset); the network accepts any size from 2**blocks up. Default learning rate
    1e-3 (Adam).
    """

    name: ClassVar[str] = "cnn"
    description: ClassVar[str] = (
        "Small CNN (Conv-BN-ReLU-MaxPool blocks + dense) trained from scratch at 128 px"
    )
    Options: ClassVar[type[CNNOptions]] = CNNOptions
    input_size: int = 128
    default_lr: ClassVar[float] = 1e-3
    pretrained_by_default: ClassVar[bool] = False

    def __init__(self, options: CNNOptions | None = None) -> None:
        super().__init__(options)
        self.input_size = self.options.input_size

    def build(self, num_classes: int, *, pretrained: bool, weights: Path | None) -> nn.Module:
        check_num_classes(num_classes, self.name)
        if weights is not None:
            raise OptionsError(
                f"classifier 'cnn' is trained from scratch and has no pretrained weights; "
                f"drop --weights {weights} (or pick an ImageNet classifier such as densenet121)"
            )
        if pretrained:
            log.warning("classifier 'cnn' has no pretrained weights; training from scratch")
        return SmallCNN(num_classes, self.options)


@hookimpl
def register_classifiers(register):
    register(CNNClassifier)
