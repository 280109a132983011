"""Differentiable augmentations for training GANs on little data, applied to reals and fakes alike.

* DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"):
  every image is transformed, every time. Policies: ``color`` (brightness and contrast; no
  saturation, the images are grayscale), ``translation`` (up to 1/8 of the size, zero padded) and
  ``cutout`` (a square of half the size set to zero).
* ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"): each
  transform is applied to each image with probability p; p is raised when the discriminator
  over-fits (the mean sign of its outputs on reals exceeds a target) and lowered otherwise.
  Transforms: x-flip, integer translation, isotropic scaling, rotation (composed into one affine
  map and resampled once, bilinear with reflection padding, without the paper's anti-aliasing
  filter), brightness and contrast.

All randomness comes from the global torch RNG of the images' device, so a resumed run that
restores the RNG state draws the same augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

DIFFAUG_POLICIES = ("color", "translation", "cutout")


def _rand(batch: int, x: torch.Tensor) -> torch.Tensor:
    return torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype)


def diffaug_color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness shift in [-0.5, 0.5] and contrast factor in [0.5, 1.5] per image."""
    batch = x.shape[0]
    x = x + (_rand(batch, x) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(batch, x) + 0.5) + mean


def diffaug_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by a random whole number of pixels (up to ``ratio`` of its size)."""
    batch, _, height, width = x.shape
    max_y, max_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-max_y, max_y + 1, (batch, 1, 1), device=x.device)
    dx = torch.randint(-max_x, max_x + 1, (batch, 1, 1), device=x.device)
    # Index into a copy padded by one zero pixel: sources outside the image land on the padding.
    rows = (torch.arange(height, device=x.device).reshape(1, -1, 1) - dy).clamp(-1, height) + 1
    cols = (torch.arange(width, device=x.device).reshape(1, 1, -1) - dx).clamp(-1, width) + 1
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    index = torch.arange(batch, device=x.device).reshape(-1, 1, 1)
    return padded[index, rows, cols].permute(0, 3, 1, 2)


def diffaug_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` times the size at a random centre in each image."""
    batch, _, height, width = x.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height, (batch, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, width, (batch, 1, 1), device=x.device) - size_x // 2
    y = torch.arange(height, device=x.device).reshape(1, -1, 1)
    xx = torch.arange(width, device=x.device).reshape(1, 1, -1)
    inside = (y >= top) & (y < top + size_y) & (xx >= left) & (xx < left + size_x)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_DIFFAUG: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "color": diffaug_color,
    "translation": diffaug_translation,
    "cutout": diffaug_cutout,
}


def diff_augment(x: torch.Tensor, policy: Sequence[str]) -> torch.Tensor:
    """Apply the DiffAugment ``policy`` (names from DIFFAUG_POLICIES, in order) to every image."""
    for name in policy:
        x = _DIFFAUG[name](x)
    return x


def ada_augment(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """ADA: each transform applied to each image independently with probability ``p``.

    ``p`` is a 0-d tensor on the images' device (no host sync). Geometric transforms are sampled
    as output-to-input maps; their distributions are symmetric, so this equals sampling the
    forward maps.
    """
    batch, _, height, width = x.shape
    device = x.device

    def gate() -> torch.Tensor:
        return torch.rand(batch, device=device) < p

    eye = torch.eye(3, device=device).expand(batch, 3, 3)

    def zeros() -> torch.Tensor:
        return torch.zeros(batch, device=device)

    # x-flip: with probability p, flip half the time.
    flip = gate() & (torch.rand(batch, device=device) < 0.5)
    m_flip = eye.clone()
    m_flip[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    # Integer translation up to 1/8 of the size; in [-1, 1] coordinates one pixel is 2/size.
    shift = torch.rand(batch, 2, device=device) * 2 - 1
    pixels = torch.round(shift * 0.125 * torch.tensor([width, height], device=device))
    pixels = torch.where(gate().unsqueeze(1), pixels, 0.0)
    m_shift = eye.clone()
    m_shift[:, 0, 2] = pixels[:, 0] * 2 / width
    m_shift[:, 1, 2] = pixels[:, 1] * 2 / height
    # Isotropic scaling, log-normal with std 0.2 * ln 2.
    scale = torch.where(gate(), torch.exp2(torch.randn(batch, device=device) * 0.2), 1.0)
    m_scale = eye.clone()
    m_scale[:, 0, 0] = scale
    m_scale[:, 1, 1] = scale
    # Rotation, uniform over the full circle.
    angle = torch.where(gate(), (torch.rand(batch, device=device) * 2 - 1) * math.pi, zeros())
    m_rot = eye.clone()
    m_rot[:, 0, 0] = torch.cos(angle)
    m_rot[:, 0, 1] = -torch.sin(angle)
    m_rot[:, 1, 0] = torch.sin(angle)
    m_rot[:, 1, 1] = torch.cos(angle)
    theta = (m_flip @ m_shift @ m_scale @ m_rot)[:, :2, :]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Brightness (additive, std 0.2) then contrast (log-normal, std 0.5 * ln 2) about zero.
    brightness = torch.where(gate(), torch.randn(batch, device=device) * 0.2, zeros())
    contrast = torch.where(gate(), torch.exp2(torch.randn(batch, device=device) * 0.5), 1.0)
    shape = (batch, 1, 1, 1)
    return (x + brightness.reshape(shape).to(x.dtype)) * contrast.reshape(shape).to(x.dtype)


class AdaptiveP:
    """ADA's controller: p follows the sign of D's outputs on reals towards ``target``.

    Every ``interval`` D steps, r_t = E[sign(D(real))] over the images seen since the last
    adjustment, and p moves by sign(r_t - target) * images / (kimg * 1000), clamped to [0, 1];
    so p can go from 0 to 1 in ``kimg`` thousand images. Tensors stay on the device (no sync).
    """

    def __init__(
        self, *, p_init: float, target: float, interval: int, kimg: float, device: torch.device
    ) -> None:
        self.target, self.interval, self.kimg = target, interval, kimg
        self.p = torch.tensor(float(p_init), device=device)
        self.stats = torch.zeros(2, dtype=torch.float64, device=device)  # sum of signs, count
        self.steps = 0

    def accumulate(
        self,
        real_logits: torch.Tensor,
        all_reduce: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        """Add one D step's logits on reals; adjust p every ``interval`` calls.

        ``all_reduce`` sums a tensor over processes in place (statistics cover the global batch).
        """
        signs = real_logits.detach().sign().double()
        self.stats += torch.stack([signs.sum(), signs.new_tensor(float(signs.numel()))])
        self.steps += 1
        if self.steps % self.interval == 0:
            if all_reduce is not None:
                all_reduce(self.stats)
            self.p.copy_(self.updated_p(self.p, self.stats))
            self.stats.zero_()

    def updated_p(self, p: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """The new p for statistics (sum of signs, number of images)."""
        count = stats[1].clamp(min=1.0)
        r_t = stats[0] / count
        step = torch.sign(r_t - self.target) * stats[1] / (self.kimg * 1000)
        return (p.double() + step).clamp(0.0, 1.0).to(p.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": self.p.detach().cpu().clone(),
            "stats": self.stats.cpu().clone(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p.copy_(state["p"])
        self.stats.copy_(state["stats"])
        self.steps = int(state["steps"])
