"""The WGAN-GP networks and the gradient penalty.

The generator is DCGAN-like (transposed convolutions with batch norm); the critic has no batch
norm, because the penalty is defined per sample and batch statistics would couple the samples
(Gulrajani et al. 2017, section 4: "we use layer normalization as a drop-in replacement").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

#: Widths double per resolution step up to this multiple of the base width, so 256x256 networks
#: do not start from 32x the base width.
MAX_WIDTH_MULT = 8

CriticNorm = Literal["layer", "none"]


def resolution_steps(image_size: int) -> int:
    """Stride-2 steps between 4x4 and ``image_size`` (a power of two, at least 8)."""
    return int(math.log2(image_size // 4))


def widths(base: int, steps: int) -> list[int]:
    """Channel widths from the coarsest (4x4) block to the finest: ..., 4*base, 2*base, base."""
    return [base * min(2 ** (steps - 1 - i), MAX_WIDTH_MULT) for i in range(steps)]


def init_weights(module: nn.Module) -> None:
    """DCGAN-style initialisation: conv/linear weights N(0, 0.02), batch-norm scales N(1, 0.02).

    The generator's label embedding keeps PyTorch's N(0, 1) so it weighs as much as z does.
    """
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """(z, label) -> [z, embedding(label)] -> 4x4 -> transposed-conv/BN/ReLU blocks -> tanh image."""

    def __init__(
        self, nz: int, num_classes: int, embed_dim: int, ngf: int, image_size: int, channels: int
    ) -> None:
        super().__init__()
        self.nz = nz
        self.embed = nn.Embedding(num_classes, embed_dim)
        w = widths(ngf, resolution_steps(image_size))
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz + embed_dim, w[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
        ]
        for prev, width in zip(w[:-1], w[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(prev, width, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(labels)], dim=1)
        return self.main(h[:, :, None, None])


class Critic(nn.Module):
    """Image -> strided conv blocks (layer norm or none) -> 4x4 features phi -> one score per image.

    Conditioning by projection (Miyato and Koyama 2018): score = w . phi + embedding(label) . phi.
    """

    def __init__(
        self, ndf: int, num_classes: int, image_size: int, channels: int, norm: CriticNorm = "layer"
    ) -> None:
        super().__init__()
        w = widths(ndf, resolution_steps(image_size))[::-1]
        layers: list[nn.Module] = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for prev, width in zip(w[:-1], w[1:], strict=True):
            layers.append(nn.Conv2d(prev, width, 4, 2, 1, bias=norm == "none"))
            if norm == "layer":
                # One group = normalise each sample over (C, H, W): layer norm for feature maps.
                layers.append(nn.GroupNorm(1, width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.main = nn.Sequential(*layers)
        features = w[-1] * 4 * 4
        self.score = nn.Linear(features, 1)
        self.project = nn.Embedding(num_classes, features)
        self.apply(init_weights)
        nn.init.normal_(self.project.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        phi = self.main(x).flatten(1)
        return self.score(phi).squeeze(1) + (self.project(labels) * phi).sum(dim=1)


def gradient_penalty(
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """E[(||grad_x critic(x, label)||_2 - 1)^2] at random points x between real and fake images.

    Unscaled (multiply by lambda). ``eps`` (B,) are the interpolation weights, U[0, 1] when not
    given. The graph is kept so the penalty can be backpropagated (a double backward).
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    b = real.shape[0]
    if eps is None:
        eps = torch.rand(b, device=real.device, dtype=real.dtype)
    eps = eps.view(b, *([1] * (real.dim() - 1)))
    x = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x, labels).sum(), x, create_graph=True)
    # The small constant keeps the norm differentiable where a gradient is exactly zero.
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + 1e-12)
    return (norm - 1).pow(2).mean()
