"""Conditional DCGAN (Mirza and Osindero, "Conditional Generative Adversarial Nets",
arXiv:1411.1784, 2014) in the form published for COVID-19 versus normal chest X-rays: label
embeddings joined to the inputs of both networks, the discriminator trained once every K generator
steps, SGD or Adam, and cosine annealing with warm restarts.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cxraug import hookimpl
from cxraug.interfaces import GAN, GANSpec, PluginOptions
from cxraug.plugins.gans import _blocks

#: Published defaults per optimizer: (learning rate, momentum or beta1).
_DEFAULTS = {"sgd": (0.01, 0.9), "adam": (2e-4, 0.9)}


class CGANOptions(PluginOptions):
    """Options of the ``cgan`` GAN."""

    nz: int = Field(100, ge=1, le=4096, description="Latent vector length.")
    embed_dim: int = Field(50, ge=1, le=1024, description="Label embedding length (G and D).")
    filters: Literal["constant", "halving"] = Field(
        "constant",
        description="Generator widths: 'constant' (ngf in every block) or 'halving' "
        "(ngf in the first block, halved per block, at least 8).",
    )
    ngf: int | None = Field(
        None, ge=1, le=1024, description="Generator width; default 64 (constant) or 256 (halving)."
    )
    ndf: int = Field(
        64, ge=1, le=1024, description="Discriminator width of the first conv, doubled per block."
    )
    d_every: int = Field(
        10, ge=1, le=1000, description="Train the discriminator once every this many G steps."
    )
    optimizer: Literal["adam", "sgd"] = Field(
        "adam",
        description="'sgd' (lr 0.01, momentum 0.9) or 'adam' (lr 2e-4, beta1 0.9), as published.",
    )
    lr_g: float | None = Field(
        None, gt=0, le=1, description="Generator learning rate; default: the optimizer's."
    )
    lr_d: float | None = Field(
        None, gt=0, le=1, description="Discriminator learning rate; default: the optimizer's."
    )
    scheduler: Literal["cosine_warm_restarts", "none"] = Field(
        "cosine_warm_restarts",
        description="Learning-rate schedule stepped per epoch: cosine annealing with warm restarts, or none.",
    )
    t0_epochs: int = Field(10, ge=1, le=10000, description="Epochs in the first cosine cycle (T_0).")
    channels_last: bool = Field(True, description="Use channels_last memory format on CUDA.")


class CGANGenerator(nn.Module):
    """z and a label -> two 4x4 maps (C0 from z, 1 from the label) -> upsampling trunk."""

    def __init__(self, nz: int, num_classes: int, embed_dim: int, widths: list[int], channels: int) -> None:
        super().__init__()
        self.c0 = widths[0]
        self.label = nn.Sequential(nn.Embedding(num_classes, embed_dim), nn.Linear(embed_dim, 16))
        self.project = nn.Sequential(nn.Linear(nz, self.c0 * 16), nn.ReLU(inplace=True))
        self.main = _blocks.upsampling_trunk(self.c0 + 1, widths[1:], channels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        h = torch.cat([self.project(z).view(b, self.c0, 4, 4), self.label(labels).view(b, 1, 4, 4)], dim=1)
        return self.main(h)


class CGANDiscriminator(nn.Module):
    """Image + label plane -> conv (no BN) -> 3 conv/BN blocks -> conv -> dropout -> 1 logit."""

    def __init__(self, ndf: int, num_classes: int, embed_dim: int, image_size: int, channels: int) -> None:
        super().__init__()
        self.size = image_size
        self.label = nn.Sequential(
            nn.Embedding(num_classes, embed_dim), nn.Linear(embed_dim, image_size * image_size)
        )
        widths = [ndf, 2 * ndf, 4 * ndf, 8 * ndf]
        self.main = _blocks.downsampling_trunk(channels + 1, widths)
        # No activation between the last conv and the flatten/dropout/dense head, as described.
        self.last = nn.Conv2d(widths[-1], widths[-1], 3, 1, 1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(widths[-1] * (image_size // 16) ** 2, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        plane = self.label(labels).view(x.shape[0], 1, self.size, self.size)
        h = self.last(self.main(torch.cat([x, plane], dim=1)))
        # A logit, not the published sigmoid: BCE-with-logits equals sigmoid + BCE, but is stable.
        return self.fc(self.dropout(h.flatten(1))).view(-1)


class CGAN(GAN[CGANOptions]):
    """Conditional DCGAN with label embeddings in G and D (published for COVID-19 vs normal).

    The discriminator is updated on steps 0, K, 2K, ... (K = ``d_every``, published 10); in the
    other steps the logged D values are those of its last update and ``d_updated`` is 0.
    """

    name: ClassVar[str] = "cgan"
    description: ClassVar[str] = "Conditional DCGAN with label embeddings, D trained every K steps"
    conditional: ClassVar[bool] = True
    #: Length of a run without --kimg/--epochs: ~2 min at 64 px on a laptop CPU.
    default_kimg: ClassVar[float] = 4.0
    Options: ClassVar[type[CGANOptions]] = CGANOptions

    @classmethod
    def check_spec(cls, options: CGANOptions, spec: GANSpec) -> None:
        _blocks.check_spec(spec, cls.name, conditional=True)

    def __init__(self, options: CGANOptions | None, spec: GANSpec) -> None:
        super().__init__(options, spec)
        o = self.options
        steps = _blocks.check_spec(spec, self.name, conditional=True)
        self.device = torch.device(spec.device)
        self._channels_last = o.channels_last and self.device.type == "cuda"

        if o.filters == "constant":
            widths = [o.ngf or 64] * steps
        else:
            start = o.ngf or 256
            widths = [max(start // 2**i, 8) for i in range(steps)]
        n = spec.num_classes
        self.G = _blocks.prepare(
            CGANGenerator(o.nz, n, o.embed_dim, widths, spec.channels), self.device, o.channels_last
        )
        self.D = _blocks.prepare(
            CGANDiscriminator(o.ndf, n, o.embed_dim, spec.image_size, spec.channels),
            self.device,
            o.channels_last,
        )
        self._G = spec.dist.wrap(self.G)
        self._D = spec.dist.wrap(self.D)

        lr, momentum = _DEFAULTS[o.optimizer]
        lr_g = o.lr_g if o.lr_g is not None else lr
        lr_d = o.lr_d if o.lr_d is not None else lr
        if o.optimizer == "sgd":
            self.opt_g = _blocks.sgd(self.G, lr_g, momentum)
            self.opt_d = _blocks.sgd(self.D, lr_d, momentum)
        else:
            self.opt_g = _blocks.adam(self.G, lr_g, (momentum, 0.999))
            self.opt_d = _blocks.adam(self.D, lr_d, (momentum, 0.999))
        self._schedulers: dict[str, Any] = {}
        if o.scheduler == "cosine_warm_restarts":
            self._schedulers = {
                name: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=o.t0_epochs)
                for name, opt in self.optimizers().items()
            }

        self.step = 0
        # Values of the last D update, reported on the steps in between.
        self._last_d = [float("nan")] * 3

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return dict(self._schedulers)

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        _blocks.check_batch(real, labels, self.spec, self.name)
        if self._channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        update_d = self.step % self.options.d_every == 0
        self.step += 1
        z = torch.randn(real.shape[0], self.options.nz, device=self.device)
        fake = self._G(z, labels)

        scalars: list[torch.Tensor] = []
        if update_d:
            # Real and fake halves apart, as in DCGAN; the fake half's backward does the DDP sync.
            self.opt_d.zero_grad(set_to_none=True)
            with _blocks.no_sync(self._D):
                out_real = self._D(real, labels)
                loss_real = F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
                loss_real.backward()
            out_fake = self._D(fake.detach(), labels)
            loss_fake = F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake))
            loss_fake.backward()
            self.opt_d.step()
            with torch.no_grad():
                scalars = [
                    loss_real + loss_fake,
                    torch.sigmoid(out_real).mean(),
                    torch.sigmoid(out_fake).mean(),
                ]

        self.opt_g.zero_grad(set_to_none=True)
        with _blocks.no_sync(self._D):
            out_g = self._D(fake, labels)
            loss_g = F.binary_cross_entropy_with_logits(out_g, torch.ones_like(out_g))
            loss_g.backward()
        self.opt_g.step()

        with torch.no_grad():
            values = torch.stack([loss_g.detach(), *scalars]).tolist()
        if update_d:
            self._last_d = values[1:]
        loss_d, d_real, d_fake = self._last_d
        return {
            "loss_d": loss_d,
            "loss_g": values[0],
            "d_real": d_real,
            "d_fake": d_fake,
            "d_updated": float(update_d),
        }

    def end_epoch(self, epoch: int) -> None:
        for scheduler in self._schedulers.values():
            scheduler.step()

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.options.nz, generator=generator)

    def generate(self, z: torch.Tensor, labels: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Images of class ``labels``; ``truncation`` < 1 scales z towards the mean."""
        _blocks.check_latents(z, labels, self.options.nz, truncation, self.name)
        with _blocks.eval_mode(self.G):
            z = z.to(self.device, torch.float32) * truncation
            return self.G(z, labels.to(self.device, torch.long)).contiguous()

    def extra_state(self) -> dict[str, Any]:
        return {"step": self.step, "last_d": list(self._last_d)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self._last_d = [float(v) for v in state["last_d"]]


@hookimpl
def register_gans(register):
    register(CGAN)
