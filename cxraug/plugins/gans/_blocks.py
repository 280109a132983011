"""Pieces the built-in GANs share: size checks, DCGAN-style trunks, initialisation, optimizers."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cxraug.errors import OptionsError
from cxraug.interfaces import GANSpec

MIN_SIZE = 16
MAX_SIZE = 256
#: Trunks double their width per resolution step up to this multiple of the base width, so a
#: 256x256 network does not start from 32 * ngf channels (64x64 never reaches the cap).
MAX_WIDTH_MULT = 8


def check_spec(spec: GANSpec, gan: str, *, conditional: bool) -> int:
    """Validate what a GAN needs from ``spec``; return the number of stride-2 resolution steps."""
    size = spec.image_size
    if not (MIN_SIZE <= size <= MAX_SIZE and size & (size - 1) == 0):
        raise OptionsError(
            f"GAN {gan!r}: image size {size} is not supported; "
            f"use a power of two between {MIN_SIZE} and {MAX_SIZE}"
        )
    if spec.channels < 1:
        raise OptionsError(f"GAN {gan!r}: channels must be at least 1, got {spec.channels}")
    if conditional and spec.num_classes < 1:
        raise OptionsError(f"GAN {gan!r} is conditional and needs at least one label")
    return int(math.log2(size // 4))


def pyramid_widths(base: int, steps: int) -> list[int]:
    """Widths from coarse (4x4) to fine for ``steps`` resolutions: ..., 4*base, 2*base, base."""
    return [base * min(2 ** (steps - 1 - i), MAX_WIDTH_MULT) for i in range(steps)]


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: weights N(0, 0.02), batch-norm scales N(1, 0.02), biases zero.

    Embeddings keep PyTorch's N(0, 1): at N(0, 0.02) a label embedding multiplied into the latent
    (AC-GAN) would all but zero it.
    """
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def upsampling_trunk(in_channels: int, widths: list[int], out_channels: int) -> nn.Sequential:
    """Stride-2 ConvTranspose2d(4x4) blocks doubling the resolution ``len(widths) + 1`` times.

    Hidden blocks are ConvTranspose + BatchNorm + ReLU (``in_channels -> widths[0] -> ...``); the
    last maps to ``out_channels`` with Tanh and no batch norm.
    """
    layers: list[nn.Module] = []
    prev = in_channels
    for width in widths:
        layers += [
            nn.ConvTranspose2d(prev, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        prev = width
    layers += [nn.ConvTranspose2d(prev, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def downsampling_trunk(in_channels: int, widths: list[int]) -> nn.Sequential:
    """Stride-2 Conv2d(4x4) blocks halving the resolution ``len(widths)`` times.

    Conv + BatchNorm + LeakyReLU(0.2), except the first block, which has no batch norm (DCGAN).
    """
    layers: list[nn.Module] = []
    prev = in_channels
    for i, width in enumerate(widths):
        layers.append(nn.Conv2d(prev, width, 4, 2, 1, bias=False))
        if i > 0:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        prev = width
    return nn.Sequential(*layers)


class DCGANGenerator(nn.Module):
    """z (B, nz) -> ConvTranspose(4x4, valid) to 4x4 -> upsampling trunk -> (B, C, S, S)."""

    def __init__(self, nz: int, ngf: int, image_size: int, channels: int) -> None:
        super().__init__()
        self.nz = nz
        widths = pyramid_widths(ngf, int(math.log2(image_size // 4)))
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            *upsampling_trunk(widths[0], widths[1:], channels),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class DCGANDiscriminator(nn.Module):
    """(B, C, S, S) -> strided conv trunk to 4x4 -> one Conv(4x4, valid) head per output size.

    With ``heads=(1,)`` this is the DCGAN discriminator returning (B,) logits; with several heads
    (AC-GAN) it returns one (B, n) tensor per head.
    """

    def __init__(self, ndf: int, image_size: int, channels: int, heads: Iterable[int] = (1,)):
        super().__init__()
        widths = pyramid_widths(ndf, int(math.log2(image_size // 4)))[::-1]
        self.main = downsampling_trunk(channels, widths)
        self.heads = nn.ModuleList(nn.Conv2d(widths[-1], n, 4, 1, 0, bias=False) for n in heads)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.main(x)
        outs = [head(h).flatten(1) for head in self.heads]
        if len(outs) == 1:
            return outs[0].view(-1)
        return tuple(outs)


def no_sync(module: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` for a wrapped module (skip the all-reduce of its grads), else a no-op."""
    fn = getattr(module, "no_sync", None)
    return fn() if callable(fn) else contextlib.nullcontext()


def _fused(make: Callable[..., torch.optim.Optimizer], params: list[nn.Parameter], **kw: Any):
    try:
        return make(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        # Fused kernels are missing for some devices/dtypes/versions; the default is equivalent.
        return make(params, **kw)


def adam(module: nn.Module, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam over ``module``'s parameters, fused where the device supports it."""
    return _fused(torch.optim.Adam, list(module.parameters()), lr=lr, betas=betas)


def sgd(module: nn.Module, lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD with momentum over ``module``'s parameters, fused where the device supports it."""
    return _fused(torch.optim.SGD, list(module.parameters()), lr=lr, momentum=momentum)


def prepare(module: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Initialise, move to ``device`` and, on CUDA when asked, switch to channels_last."""
    module.apply(init_weights)
    module.to(device)
    if channels_last and device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    return module


def check_batch(real: torch.Tensor, labels: torch.Tensor, spec: GANSpec, gan: str) -> None:
    """Shape checks on a training batch (no device sync)."""
    expected = (spec.channels, spec.image_size, spec.image_size)
    if real.dim() != 4 or tuple(real.shape[1:]) != expected:
        raise ValueError(f"{gan}.train_step: real must be (B, {expected}), got {tuple(real.shape)}")
    if labels.shape != (real.shape[0],):
        raise ValueError(f"{gan}.train_step: labels must be ({real.shape[0]},), got {tuple(labels.shape)}")


def check_latents(z: torch.Tensor, labels: torch.Tensor, nz: int, truncation: float, gan: str) -> None:
    """Shape and truncation checks for ``generate``."""
    if z.dim() != 2 or z.shape[1] != nz:
        raise ValueError(f"{gan}.generate: z must be (N, {nz}), got {tuple(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"{gan}.generate: labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
    if not truncation > 0:
        raise OptionsError(f"{gan}: truncation must be > 0, got {truncation}")


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Put ``module`` in eval mode and without gradients; restore its mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)
