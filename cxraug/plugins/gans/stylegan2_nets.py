"""StyleGAN2 networks (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Mapping network, skip-architecture synthesis network with modulated/demodulated convolutions, and
a residual discriminator with a minibatch standard deviation layer and projection conditioning.
Every weight uses the equalized learning rate (stored N(0, 1), scaled by He's constant at run
time). Resampling is kept simple (a documented departure from the paper's FIR filters):

* upsampling is bilinear (``align_corners=False``), which is exactly the separable [1, 3, 3, 1]
  filter applied after zero insertion, with replicated rather than zero-padded borders;
* downsampling is a 2x2 average (box filter) before the convolution, which also makes the
  downsampling convolution 4x cheaper than a stride-2 convolution at full resolution.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)
NOISE_MODES = ("random", "const", "none")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at ``resolution``: min(channel_base // resolution, channel_max)."""
    return min(channel_base // resolution, channel_max)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) with gain sqrt(2), which keeps the signal variance near 1."""
    return F.leaky_relu(x, 0.2) * SQRT2


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pixel norm over dim 1: scale each vector to unit root-mean-square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def autocast(device: torch.device, enabled: bool) -> Any:
    """bfloat16 autocast on CUDA when ``enabled``; a no-op otherwise (CPU always runs fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def fp32(device: torch.device) -> Any:
    """Turn autocast off inside an autocast region (styles and demodulation stay in fp32)."""
    return torch.autocast(device.type, enabled=False)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate and an optional learning-rate multiplier.

    The weight is stored as N(0, 1) / lr_mul and multiplied by lr_mul / sqrt(fan_in) at run time,
    so Adam's effective step for this layer is scaled by ``lr_mul`` (0.01 in the mapping network).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activate: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return lrelu(x) if self.activate else x


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate; ``down`` halves the input (2x2 average) first."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activate: bool = True,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activate = activate
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return lrelu(x) if self.activate else x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool,
    grouped: bool = True,
) -> torch.Tensor:
    """Per-sample modulated (and optionally demodulated) convolution.

    ``x`` (B, I, H, W), ``weight`` (O, I, k, k) already scaled, ``styles`` (B, I) in fp32.
    ``grouped`` builds every sample's weights and runs one grouped convolution;
    otherwise the styles scale the input, one shared convolution runs over the whole batch and the
    demodulation coefficients scale its output: the same function, usually faster to train on GPUs.
    """
    batch, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    if not grouped:
        x = x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1)
        out = F.conv2d(x, weight, padding=kh // 2)
        if demodulate:
            with fp32(x.device):
                # sum over i, k of (w[o, i, k] * s[b, i])^2 = (s^2 @ (sum over k of w^2)^T)[b, o]
                power = styles.square() @ weight.square().sum(dim=(2, 3)).t()
                dcoefs = (power + 1e-8).rsqrt()
            out = out * dcoefs.to(out.dtype).reshape(batch, out_channels, 1, 1)
        return out
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_channels, 1, 1)  # (B, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, batch * in_channels, height, width)
    w = w.reshape(batch * out_channels, in_channels, kh, kw)
    out = F.conv2d(x, w, padding=kh // 2, groups=batch)
    return out.reshape(batch, out_channels, out.shape[2], out.shape[3])


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (+ optional 2x upsampling), noise, bias and leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        up: bool,
        grouped: bool = True,
    ) -> None:
        super().__init__()
        self.grouped = grouped
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        # Fixed per-layer noise for deterministic generation (noise_mode="const").
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_const: torch.Tensor
        self.up = up
        self.resolution = resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        with fp32(x.device):
            styles = self.affine(w.float())
            weight = self.weight * self.weight_gain
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, weight, styles, demodulate=True, grouped=self.grouped)
        if noise_mode == "random":
            noise = torch.randn(
                x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype
            )
            x = x + noise * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        return lrelu(x + self.bias.to(x.dtype).reshape(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Modulated 1x1 convolution without demodulation to the image channels, plus bias."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, *, grouped: bool = True) -> None:
        super().__init__()
        self.grouped = grouped
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        with fp32(x.device):
            styles = self.affine(w.float())
            weight = self.weight * self.weight_gain
        x = modulated_conv2d(x, weight, styles, demodulate=False, grouped=self.grouped)
        return x.float() + self.bias.reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """Skip-generator block: (const or 2x up conv), conv, toRGB summed into the image."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        *,
        grouped: bool = True,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0: SynthesisLayer | None = None
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=True, grouped=grouped
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, up=False, grouped=grouped)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, grouped=grouped)
        self.num_conv = 1 if self.conv0 is None else 2

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ws`` holds num_conv + 1 vectors: one per convolution, the last for toRGB."""
        if self.conv0 is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            assert x is not None
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, self.num_conv])
        if img is not None:
            y = y + F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
        return x, y


class SynthesisNetwork(nn.Module):
    """Learned 4x4 constant up to ``img_resolution``; the image sums every block's toRGB."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        *,
        grouped: bool = True,
    ) -> None:
        super().__init__()
        self.resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        blocks = []
        for res in self.resolutions:
            in_ch = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            out_ch = channels_at(res, channel_base, channel_max)
            blocks.append(SynthesisBlock(in_ch, out_ch, w_dim, res, img_channels, grouped=grouped))
        self.blocks = nn.ModuleList(blocks)
        self.block_convs = [b.num_conv for b in blocks]
        # A block's toRGB shares its w with the next block's first convolution.
        self.num_ws = sum(self.block_convs) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x: torch.Tensor | None = None
        img: torch.Tensor | None = None
        index = 0
        for block, num_conv in zip(self.blocks, self.block_convs, strict=True):
            x, img = block(x, img, ws[:, index : index + num_conv + 1], noise_mode)
            index += num_conv
        assert img is not None
        return img


class MappingNetwork(nn.Module):
    """z (and label) -> w, broadcast to every layer; tracks the running mean of w for truncation."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int,
        lr_mul: float,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        self.embed = EqualLinear(c_dim, w_dim) if c_dim > 0 else None
        features = z_dim + (w_dim if c_dim > 0 else 0)
        layers = []
        for _ in range(num_layers):
            layers.append(EqualLinear(features, w_dim, lr_mul=lr_mul, activate=True))
            features = w_dim
        self.layers = nn.Sequential(*layers)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg: torch.Tensor

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        *,
        psi: float = 1.0,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """(B, z_dim) latents and (B,) label indices -> (B, num_ws, w_dim)."""
        x = normalize_2nd_moment(z.float())
        if self.embed is not None:
            y = self.embed(F.one_hot(c.long(), self.c_dim).float())
            x = torch.cat([x, normalize_2nd_moment(y)], dim=1)
        x = self.layers(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if psi != 1.0:
            x = self.w_avg.lerp(x, psi)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)


class Generator(nn.Module):
    """Mapping + synthesis; one forward call per training pass so DDP sees a single graph."""

    def __init__(
        self,
        *,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_layers: int,
        mapping_lr_mul: float,
        channel_base: int,
        channel_max: int,
        grouped_modconv: bool = True,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base, channel_max, grouped=grouped_modconv
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_mul)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        *,
        psi: float = 1.0,
        noise_mode: str = "random",
        style_mixing: float = 0.0,
        update_w_avg: bool = False,
        amp: bool = False,
        return_ws: bool = False,
    ) -> Any:
        """Images (B, C, S, S) in fp32 (and the per-layer ``ws`` when ``return_ws``).

        ``style_mixing`` is the probability that a sample switches, at a random layer, to the w of
        a second latent (mixing regularisation); ``amp`` autocasts the synthesis network to
        bfloat16 on CUDA.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        ws = self.mapping(z, c, psi=psi, update_w_avg=update_w_avg)
        if style_mixing > 0:
            batch = z.shape[0]
            ws2 = self.mapping(torch.randn_like(z), c, psi=psi)
            cutoff = torch.randint(1, self.num_ws, (batch,), device=z.device)
            mixed = torch.rand(batch, device=z.device) < style_mixing
            cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, self.num_ws))
            take_second = torch.arange(self.num_ws, device=z.device).unsqueeze(0) >= cutoff[:, None]
            ws = torch.where(take_second.unsqueeze(2), ws2, ws)
        with autocast(z.device, amp):
            img = self.synthesis(ws, noise_mode=noise_mode)
        img = img.float()
        return (img, ws) if return_ws else img


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one feature map: the mean over features of the std over each group of samples.

    Groups are runs of ``group_size`` consecutive samples (``group_size`` must divide the batch),
    so a batch that concatenates fakes and reals of equal size never mixes the two in one group.
    """
    batch, channels, height, width = x.shape
    if batch % group_size != 0:
        raise ValueError(f"minibatch_stddev: group size {group_size} does not divide {batch}")
    y = x.float().reshape(batch // group_size, group_size, channels, height, width)
    y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)
    y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (batch // group_size,)
    y = y.repeat_interleave(group_size).reshape(batch, 1, 1, 1).expand(batch, 1, height, width)
    return torch.cat([x, y.to(x.dtype)], dim=1)


def mbstd_group_size(batch: int, maximum: int) -> int:
    """The largest group size <= ``maximum`` that divides ``batch``."""
    return max(g for g in range(1, min(maximum, batch) + 1) if batch % g == 0)


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3x3 convs (the second downsampling) plus a 1x1 downsampling skip."""

    def __init__(self, in_channels: int, out_channels: int, img_channels: int, first: bool):
        super().__init__()
        self.fromrgb = EqualConv2d(img_channels, in_channels, 1) if first else None
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activate=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        y = self.skip(x)
        x = self.conv1(self.conv0(x))
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Residual discriminator; with labels, the logit is the projection of the features on a
    learned label embedding (scaled by 1 / sqrt(dim))."""

    def __init__(
        self,
        *,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        mbstd_group: int = 4,
    ) -> None:
        super().__init__()
        self.c_dim = c_dim
        self.mbstd_group = mbstd_group
        ch = [
            channels_at(2**i, channel_base, channel_max) for i in range(int(math.log2(img_resolution)), 1, -1)
        ]  # from the top resolution down to 4x4
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[i], ch[i + 1], img_channels, first=i == 0) for i in range(len(ch) - 1)
        )
        c4 = ch[-1]
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activate=True)
        self.cmap_dim = c4 if c_dim > 0 else 1
        self.out = EqualLinear(c4, self.cmap_dim)
        self.embed = EqualLinear(c_dim, self.cmap_dim) if c_dim > 0 else None

    def freeze_blocks(self, n: int) -> None:
        """Stop training the first ``n`` blocks (from the top resolution, fromRGB included).

        Call before the module is wrapped for distribution; frozen weights get no gradients.
        """
        for block in self.blocks[:n]:
            block.requires_grad_(False)

    def forward(
        self,
        img: torch.Tensor,
        c: torch.Tensor,
        *,
        group_size: int | None = None,
        amp: bool = False,
    ) -> torch.Tensor:
        """(B, C, S, S) images and (B,) labels -> (B,) fp32 logits."""
        group = mbstd_group_size(img.shape[0], self.mbstd_group) if group_size is None else group_size
        with autocast(img.device, amp):
            x = img
            for block in self.blocks:
                x = block(x)
            x = self.conv(minibatch_stddev(x, group))
            x = self.fc(x.flatten(1))
            x = self.out(x)
        x = x.float()
        if self.embed is not None:
            cmap = self.embed(F.one_hot(c.long(), self.c_dim).float())
            return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
        return x[:, 0]
