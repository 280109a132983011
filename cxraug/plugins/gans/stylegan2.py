"""StyleGAN2 with adaptive or differentiable augmentation, for small chest X-ray datasets.

Papers:

* Karras, Laine, Aittala, Hellsten, Lehtinen and Aila, "Analyzing and Improving the Image Quality
  of StyleGAN", CVPR 2020 (arXiv:1912.04958): weight demodulation, skip generator, residual
  discriminator, lazy regularisation, path-length regularisation.
* Karras, Aittala, Hellsten, Laine, Lehtinen and Aila, "Training Generative Adversarial Networks
  with Limited Data", NeurIPS 2020 (arXiv:2006.06676): adaptive discriminator augmentation (ADA),
  the R1 gamma heuristic, projection conditioning, discriminator freezing for transfer.
* Zhao, Liu, Lin, Zhu and Han, "Differentiable Augmentation for Data-Efficient GAN Training",
  NeurIPS 2020 (arXiv:2006.10738): DiffAugment.

How one ``train_step`` runs (phases as in the lazy-regularisation scheme of the StyleGAN2 paper):

1. G main: non-saturating loss on fakes (style mixing, random noise) through D; only G's
   parameters receive gradients (``backward(inputs=...)``), D is not touched.
2. G path-length regularisation every ``pl_interval`` steps when ``pl_weight`` > 0, its own Adam
   step with the loss multiplied by the interval.
3. G_ema update (half-life ``ema_kimg`` thousand images, optionally ramped up).
4. D main: logistic loss on fakes and reals, augmented together in one D pass.
5. D R1 regularisation every ``r1_interval`` steps, its own Adam step, loss times the interval.

Adam's lr and betas are compensated for the extra regularisation steps (c = k / (k + 1)) on the
network whose regularisation is enabled.

Distributed training: the main passes go through the modules wrapped by ``spec.dist.wrap`` (DDP
all-reduces their gradients). The regularisation passes differentiate twice, which DDP does not
support, so they run on the raw modules and call ``spec.dist.all_reduce_grads`` before their
optimizer step. ADA statistics and the path-length mean are summed with ``torch.distributed``
when more than one process trains.

Mixed precision (``amp``): on CUDA the synthesis network and D's convolutions run under bfloat16
autocast when the GPU supports bfloat16 (no GradScaler, hence no scaler state in checkpoints);
otherwise, and always on the CPU, everything is fp32. Mapping, styles, demodulation, losses and
both regularisers stay in fp32; ``generate`` is always fp32.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from cxraug import hookimpl
from cxraug.errors import DataError, OptionsError
from cxraug.interfaces import GAN, GANSpec, PluginOptions
from cxraug.plugins.gans.stylegan2_augment import (
    DIFFAUG_POLICIES,
    AdaptiveP,
    ada_augment,
    diff_augment,
)
from cxraug.plugins.gans.stylegan2_nets import (
    Discriminator,
    Generator,
    channels_at,
    mbstd_group_size,
)
from cxraug.plugins.gans.stylegan2_snapshots import (
    check_compatible,
    describe,
    estimate_w_avg,
    load_into,
)
from cxraug.snapshotio import NVLABS_PKL, ROSINALITY_PT, ForeignSnapshot

logger = logging.getLogger(__name__)

MIN_SIZE = 32
MAX_SIZE = 512


class StyleGAN2Options(PluginOptions):
    """Options of the ``stylegan2`` GAN (defaults as published, except ``pl_weight``)."""

    z_dim: int = Field(512, ge=1, le=4096, description="Latent (z) length.")
    w_dim: int = Field(512, ge=1, le=4096, description="Intermediate latent (w) length.")
    mapping_layers: int = Field(
        8, ge=1, le=16, description="Fully connected layers in the mapping network (8 published)."
    )
    mapping_lr_mul: float = Field(
        0.01, gt=0, le=1, description="Learning-rate multiplier of the mapping network."
    )
    channel_base: int = Field(
        16384, ge=1, le=1 << 20, description="Feature maps at resolution r: min(channel_base // r, max)."
    )
    channel_max: int = Field(512, ge=1, le=8192, description="Upper bound on feature maps per layer.")
    g_lr: float = Field(0.0025, gt=0, le=1, description="Generator Adam learning rate.")
    d_lr: float = Field(0.0025, gt=0, le=1, description="Discriminator Adam learning rate.")
    r1_gamma: float | None = Field(
        None,
        ge=0,
        description="R1 weight; unset: 0.0002 * size^2 / batch (ADA's heuristic); 0 disables.",
    )
    r1_interval: int = Field(16, ge=1, description="Apply R1 every this many D steps (lazy).")
    pl_weight: float = Field(
        0.0, ge=0, description="Path-length regularisation weight (2 published; 0 disables)."
    )
    pl_interval: int = Field(4, ge=1, description="Apply path-length reg every this many G steps.")
    style_mixing: float = Field(
        0.9, ge=0, le=1, description="Probability of style mixing per sample (0 disables)."
    )
    ema_kimg: float = Field(
        10.0, ge=0, description="Half-life of G_ema in thousands of images (0: G_ema copies G)."
    )
    ema_rampup: float = Field(
        0.05,
        ge=0,
        description="Cap the EMA half-life at this fraction of images seen so far (0: no ramp).",
    )
    augment: Literal["ada", "diffaug", "none"] = Field(
        "ada", description="Augmentation before D: ada (adaptive p), diffaug or none."
    )
    diffaug_policy: str = Field(
        "color,translation,cutout",
        description="Comma-separated DiffAugment transforms among color, translation, cutout.",
    )
    ada_target: float = Field(
        0.6, gt=0, lt=1, description="ADA target for E[sign(D(real))] (over-fitting heuristic)."
    )
    ada_interval: int = Field(4, ge=1, description="Adjust ADA's p every this many D steps.")
    ada_kimg: int = Field(500, ge=1, description="Thousands of images for ADA's p to move from 0 to 1.")
    ada_p_init: float = Field(0.0, ge=0, le=1, description="ADA's initial augmentation p.")
    freeze_d: int = Field(
        0, ge=0, description="Freeze the first N D blocks (from the top resolution) for transfer."
    )
    mbstd_group: int = Field(4, ge=1, description="Minibatch-stddev group size (at most).")
    modconv: Literal["grouped", "scaled"] = Field(
        "grouped",
        description="Modulated conv as per-sample weights in one grouped conv, or as input/output "
        "scaling around one shared conv (same function; often faster to train on GPUs).",
    )
    amp: bool = Field(True, description="bfloat16 autocast on CUDA GPUs that support it.")

    @field_validator("diffaug_policy")
    @classmethod
    def _check_policy(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in DIFFAUG_POLICIES]
        if unknown:
            raise ValueError(
                f"unknown DiffAugment transform(s) {unknown}; choose from {list(DIFFAUG_POLICIES)}"
            )
        return ",".join(names)


class StyleGAN2(GAN[StyleGAN2Options]):
    """StyleGAN2 (Karras et al. 2020) with ADA (Karras et al. 2020) or DiffAugment (Zhao et al.
    2020): skip generator, residual discriminator, lazy R1, optional path-length regularisation.

    Conditional through a label embedding in the mapping network and projection in D; with a
    single label it is unconditional. Sizes: powers of two from 32 to 512.
    """

    name: ClassVar[str] = "stylegan2"
    description: ClassVar[str] = "StyleGAN2 + ADA/DiffAugment (Karras et al. 2020), conditional"
    conditional: ClassVar[bool] = True
    #: Length of a run without --kimg/--epochs: a smoke run (~2-3 min on a laptop CPU at 64 px);
    #: real training needs thousands of kimg on a GPU.
    default_kimg: ClassVar[float] = 0.2
    Options: ClassVar[type[StyleGAN2Options]] = StyleGAN2Options

    def __init__(self, options: StyleGAN2Options | None, spec: GANSpec) -> None:
        super().__init__(options, spec)
        o = self.options
        self.check_spec(o, spec)
        self.device = torch.device(spec.device)
        size = spec.image_size
        self.c_dim = spec.num_classes if spec.num_classes > 1 else 0
        self._amp = bool(o.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self._policy = tuple(name for name in o.diffaug_policy.split(",") if name)

        self.G = Generator(
            z_dim=o.z_dim,
            c_dim=self.c_dim,
            w_dim=o.w_dim,
            img_resolution=size,
            img_channels=spec.channels,
            mapping_layers=o.mapping_layers,
            mapping_lr_mul=o.mapping_lr_mul,
            channel_base=o.channel_base,
            channel_max=o.channel_max,
            grouped_modconv=o.modconv == "grouped",
        ).to(self.device)
        self.D = Discriminator(
            c_dim=self.c_dim,
            img_resolution=size,
            img_channels=spec.channels,
            channel_base=o.channel_base,
            channel_max=o.channel_max,
            mbstd_group=o.mbstd_group,
        ).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        # Frozen before any wrapping, so DDP never sees a requires_grad change.
        self.D.freeze_blocks(o.freeze_d)

        batch = max(spec.batch_size, 1)
        self.r1_gamma = o.r1_gamma if o.r1_gamma is not None else 2e-4 * size**2 / batch
        self._r1_on = self.r1_gamma > 0
        self._pl_on = o.pl_weight > 0
        self._g_params = [p for p in self.G.parameters() if p.requires_grad]
        self._d_params = [p for p in self.D.parameters() if p.requires_grad]
        self.opt_g = self._adam(self._g_params, o.g_lr, o.pl_interval if self._pl_on else 0)
        self.opt_d = self._adam(self._d_params, o.d_lr, o.r1_interval if self._r1_on else 0)

        self.ada = AdaptiveP(
            p_init=o.ada_p_init,
            target=o.ada_target,
            interval=o.ada_interval,
            kimg=o.ada_kimg,
            device=self.device,
        )
        self.pl_mean = torch.zeros([], device=self.device)
        self._last_r1 = torch.zeros([], device=self.device)
        self._last_pl = torch.zeros([], device=self.device)
        self._g_steps = 0
        self._d_steps = 0
        self._nimg = 0
        # Wrapped on the first train_step, after the engine has loaded any weights.
        self._G_train: nn.Module | None = None
        self._D_train: nn.Module | None = None

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def check_spec(cls, options: StyleGAN2Options, spec: GANSpec) -> None:
        o = options
        size = spec.image_size
        if not (MIN_SIZE <= size <= MAX_SIZE and size & (size - 1) == 0):
            valid = ", ".join(str(2**i) for i in range(5, 10))
            raise OptionsError(
                f"GAN 'stylegan2': image size {size} is not supported; "
                f"use a power of two from {MIN_SIZE} to {MAX_SIZE} ({valid})"
            )
        if spec.channels < 1:
            raise OptionsError(f"GAN 'stylegan2': channels must be at least 1, got {spec.channels}")
        if spec.num_classes < 1:
            raise OptionsError("GAN 'stylegan2' needs at least one label")
        if channels_at(size, o.channel_base, o.channel_max) < 1:
            raise OptionsError(
                f"GAN 'stylegan2': channel_base={o.channel_base} gives no feature maps at "
                f"{size}x{size}; set channel_base to at least {size}"
            )
        d_blocks = int(math.log2(size)) - 2
        if o.freeze_d > d_blocks:
            raise OptionsError(
                f"GAN 'stylegan2': freeze_d={o.freeze_d} but the {size}x{size} discriminator has "
                f"{d_blocks} blocks; use 0..{d_blocks}"
            )

    def _adam(self, params: list[nn.Parameter], lr: float, reg_interval: int) -> torch.optim.Optimizer:
        """Adam(betas=(0, 0.99), eps=1e-8), compensated for lazy regularisation steps."""
        c = reg_interval / (reg_interval + 1) if reg_interval > 0 else 1.0
        kwargs: dict[str, Any] = {"lr": lr * c, "betas": (0.0**c, 0.99**c), "eps": 1e-8}
        if self.device.type == "cuda":
            try:
                return torch.optim.Adam(params, fused=True, **kwargs)
            except (RuntimeError, TypeError, ValueError):
                logger.debug("fused Adam unavailable; using the default implementation")
        return torch.optim.Adam(params, **kwargs)

    def _wrapped(self) -> tuple[nn.Module, nn.Module]:
        if self._G_train is None or self._D_train is None:
            self._G_train = self.spec.dist.wrap(self.G)
            self._D_train = self.spec.dist.wrap(self.D)
        return self._G_train, self._D_train

    # ------------------------------------------------------------------------------- contract

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.options.z_dim, generator=generator)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Deterministic images from G_ema (constant noise); ``truncation`` is psi (1: none)."""
        if z.dim() != 2 or z.shape[1] != self.options.z_dim:
            raise ValueError(f"stylegan2.generate: z must be (N, {self.options.z_dim}), got {tuple(z.shape)}")
        if labels.shape != (z.shape[0],):
            raise ValueError(f"stylegan2.generate: labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
        if not 0.0 <= truncation <= 1.0:
            raise OptionsError(f"stylegan2: truncation must be in [0, 1], got {truncation}")
        self.G_ema.eval()
        img = self.G_ema(
            z.to(self.device, torch.float32),
            labels.to(self.device, torch.long),
            psi=truncation,
            noise_mode="const",
        )
        return img.clamp(-1.0, 1.0)

    snapshot_formats: ClassVar[tuple[str, ...]] = (NVLABS_PKL, ROSINALITY_PT)

    def load_snapshot(self, snapshot: ForeignSnapshot) -> dict[str, Any]:
        """Start from an NVlabs or rosinality StyleGAN2 snapshot (see stylegan2_snapshots)."""
        shape = describe(snapshot)
        check_compatible(snapshot, shape, self.options, self.spec.image_size)
        report = load_into(self.networks(), snapshot, shape, self.options.mapping_lr_mul, self.options.z_dim)
        if "G_ema.mapping.w_avg" in report.initial:
            # rosinality keeps no running mean of w; truncation needs one (its mean_latent)
            w_avg = estimate_w_avg(self.G_ema.mapping, self.options.z_dim)
            for net in ("G", "G_ema"):
                getattr(self, net).mapping.w_avg.copy_(w_avg)
                report.initial.remove(f"{net}.mapping.w_avg")
                report.adapted[f"{net}.mapping.w_avg"] = "estimated: mean w of 4096 fixed latents"
        return report.as_json()

    @classmethod
    def from_snapshot(cls, snapshot: ForeignSnapshot, device: str) -> StyleGAN2:
        """A one-channel StyleGAN2 of the snapshot's shapes; labels ``all`` or ``class_0``..."""
        shape = describe(snapshot)
        labels = [f"class_{i}" for i in range(shape.c_dim)] if shape.c_dim > 1 else ["all"]
        options = StyleGAN2Options(**shape.options())
        spec = GANSpec(image_size=shape.resolution, labels=labels, device=device, batch_size=1)
        try:
            cls.check_spec(options, spec)
        except OptionsError as exc:
            raise DataError(f"snapshot {snapshot.path}: {exc}") from None
        gan = cls(options, spec)
        gan.load_snapshot(snapshot)
        return gan

    def extra_state(self) -> dict[str, Any]:
        return {
            "g_steps": self._g_steps,
            "d_steps": self._d_steps,
            "nimg": self._nimg,
            "ada": self.ada.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu().clone(),
            "last_r1": self._last_r1.detach().cpu().clone(),
            "last_pl": self._last_pl.detach().cpu().clone(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._g_steps = int(state["g_steps"])
        self._d_steps = int(state["d_steps"])
        self._nimg = int(state["nimg"])
        self.ada.load_state_dict(state["ada"])
        self.pl_mean.copy_(state["pl_mean"])
        self._last_r1.copy_(state["last_r1"])
        self._last_pl.copy_(state["last_pl"])

    # ------------------------------------------------------------------------------- training

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.augment == "ada":
            return ada_augment(x, self.ada.p)
        if self.options.augment == "diffaug":
            return diff_augment(x, self._policy)
        return x

    def _all_reduce_sum(self, t: torch.Tensor) -> None:
        if (
            self.spec.dist.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            torch.distributed.all_reduce(t)

    def _check_batch(self, real: torch.Tensor, labels: torch.Tensor) -> None:
        expected = (self.spec.channels, self.spec.image_size, self.spec.image_size)
        if real.dim() != 4 or tuple(real.shape[1:]) != expected:
            raise ValueError(f"stylegan2.train_step: real must be (B, {expected}), got {tuple(real.shape)}")
        if labels.shape != (real.shape[0],):
            raise ValueError(
                f"stylegan2.train_step: labels must be ({real.shape[0]},), got {tuple(labels.shape)}"
            )

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        self._check_batch(real, labels)
        o = self.options
        G_train, D_train = self._wrapped()
        real = real.to(self.device, torch.float32)
        c = labels.to(self.device, torch.long)
        batch = real.shape[0]
        group = mbstd_group_size(batch, o.mbstd_group)
        self.G.train()
        self.D.train()

        # G main: gradients for G only; D's parameters are not differentiated.
        z = torch.randn(batch, o.z_dim, device=self.device)
        fake = G_train(z, c, style_mixing=o.style_mixing, update_w_avg=True, amp=self._amp)
        loss_g = F.softplus(-self.D(self._augment(fake), c, group_size=group, amp=self._amp))
        loss_g = loss_g.mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward(inputs=self._g_params)
        self.opt_g.step()

        if self._pl_on and self._g_steps % o.pl_interval == 0:
            self._path_length_step(batch, c)
        self._g_steps += 1
        self._update_ema(batch * self.spec.dist.world_size)

        # D main: fakes and reals augmented and judged in one pass (mbstd groups never mix them).
        with torch.no_grad():
            z = torch.randn(batch, o.z_dim, device=self.device)
            fake = self.G(z, c, style_mixing=o.style_mixing, amp=self._amp)
        images = self._augment(torch.cat([fake, real]))
        logits = D_train(images, torch.cat([c, c]), group_size=group, amp=self._amp)
        logits_fake, logits_real = logits[:batch], logits[batch:]
        loss_d = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        if o.augment == "ada":
            self.ada.accumulate(logits_real, self._all_reduce_sum)

        if self._r1_on and self._d_steps % o.r1_interval == 0:
            self._r1_step(real, c, group)
        self._d_steps += 1
        self._nimg += batch * self.spec.dist.world_size

        names = ["loss_g", "loss_d", "r1", "ada_p", "d_real_sign"]
        values = [
            loss_g.detach(),
            loss_d.detach(),
            self._last_r1,
            self.ada.p,
            logits_real.detach().sign().mean(),
        ]
        if self._pl_on:
            names.append("pl")
            values.append(self._last_pl)
        stats = torch.stack([v.float() for v in values]).tolist()
        return dict(zip(names, stats, strict=True))

    def _path_length_step(self, batch: int, c: torch.Tensor) -> None:
        """Path-length regularisation on half a batch, through the raw G (double backward)."""
        o = self.options
        n = max(batch // 2, 1)
        z = torch.randn(n, o.z_dim, device=self.device)
        img, ws = self.G(z, c[:n], style_mixing=o.style_mixing, return_ws=True)
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()
        with torch.no_grad():
            mean = lengths.mean().detach().clone()
            self._all_reduce_sum(mean)
            mean /= self.spec.dist.world_size
            self.pl_mean.copy_(self.pl_mean.lerp(mean, 0.01))
        penalty = (lengths - self.pl_mean).square().mean()
        # img * 0 keeps every G parameter in the graph (a zero gradient rather than none).
        loss = (penalty * o.pl_weight + img[:, 0, 0, 0].sum() * 0) * o.pl_interval
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.spec.dist.all_reduce_grads(self.G)
        self.opt_g.step()
        self._last_pl = penalty.detach()

    def _r1_step(self, real: torch.Tensor, c: torch.Tensor, group: int) -> None:
        """R1 on (augmented) reals, gradient w.r.t. the unaugmented images, through the raw D."""
        o = self.options
        x = real.detach().requires_grad_(True)
        logits = self.D(self._augment(x), c, group_size=group)
        (grads,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = grads.square().sum(dim=(1, 2, 3)).mean()
        loss = (penalty * (self.r1_gamma / 2) + logits.sum() * 0) * o.r1_interval
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.spec.dist.all_reduce_grads(self.D)
        self.opt_d.step()
        self._last_r1 = penalty.detach()

    @torch.no_grad()
    def _update_ema(self, images: int) -> None:
        o = self.options
        half_life = o.ema_kimg * 1000
        if o.ema_rampup > 0:
            half_life = min(half_life, self._nimg * o.ema_rampup)
        beta = 0.5 ** (images / half_life) if half_life > 0 else 0.0
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)


@hookimpl
def register_gans(register: Callable[[type], None]) -> None:
    register(StyleGAN2)
