"""DCGAN: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016 (arXiv:1511.06434).

Unconditional: the engine trains one instance per label, or one on all labels pooled.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cxraug import hookimpl
from cxraug.interfaces import GAN, GANSpec, PluginOptions
from cxraug.plugins.gans import _blocks


class DCGANOptions(PluginOptions):
    """Options of the ``dcgan`` GAN."""

    nz: int = Field(100, ge=1, le=4096, description="Latent vector length.")
    ngf: int = Field(64, ge=1, le=1024, description="Generator width at the finest resolution.")
    ndf: int = Field(64, ge=1, le=1024, description="Discriminator width at the finest resolution.")
    lr_g: float = Field(2e-4, gt=0, le=1, description="Generator Adam learning rate.")
    lr_d: float = Field(2e-4, gt=0, le=1, description="Discriminator Adam learning rate.")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="One-sided label smoothing: real target is 1 - this."
    )
    channels_last: bool = Field(True, description="Use channels_last memory format on CUDA.")


class DCGAN(GAN[DCGANOptions]):
    """Deep convolutional GAN (Radford et al. 2016).

    At 64x64 with ngf = ndf = 64 the networks are exactly the published ones:
    z -> 512x4x4 -> 256x8x8 -> 128x16x16 -> 64x32x32 -> Cx64x64 and back down to one logit.
    Other sizes (powers of two, 16..256) add or drop a stage; widths stop doubling at 8 * ngf.
    """

    name: ClassVar[str] = "dcgan"
    description: ClassVar[str] = "DCGAN (Radford et al. 2016), unconditional, one model per label"
    conditional: ClassVar[bool] = False
    #: Length of a run without --kimg/--epochs: per label: ~2 min for 3 labels at 64 px on a laptop CPU.
    default_kimg: ClassVar[float] = 2.0
    Options: ClassVar[type[DCGANOptions]] = DCGANOptions

    @classmethod
    def check_spec(cls, options: DCGANOptions, spec: GANSpec) -> None:
        _blocks.check_spec(spec, cls.name, conditional=False)

    def __init__(self, options: DCGANOptions | None, spec: GANSpec) -> None:
        super().__init__(options, spec)
        o = self.options
        _blocks.check_spec(spec, self.name, conditional=False)
        self.device = torch.device(spec.device)
        self._channels_last = o.channels_last and self.device.type == "cuda"

        self.G = _blocks.prepare(
            _blocks.DCGANGenerator(o.nz, o.ngf, spec.image_size, spec.channels),
            self.device,
            o.channels_last,
        )
        self.D = _blocks.prepare(
            _blocks.DCGANDiscriminator(o.ndf, spec.image_size, spec.channels),
            self.device,
            o.channels_last,
        )
        self._G = spec.dist.wrap(self.G)
        self._D = spec.dist.wrap(self.D)
        self.opt_g = _blocks.adam(self.G, o.lr_g, (o.beta1, o.beta2))
        self.opt_d = _blocks.adam(self.D, o.lr_d, (o.beta1, o.beta2))

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        _blocks.check_batch(real, labels, self.spec, self.name)
        if self._channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(real.shape[0], self.options.nz, device=self.device)
        fake = self._G(z)

        # D step: real and fake batches kept apart (separate batch-norm statistics, as published);
        # under DDP the real half accumulates locally and the fake half's backward syncs both.
        self.opt_d.zero_grad(set_to_none=True)
        with _blocks.no_sync(self._D):
            out_real = self._D(real)
            loss_real = F.binary_cross_entropy_with_logits(
                out_real, torch.full_like(out_real, 1.0 - self.options.label_smoothing)
            )
            loss_real.backward()
        out_fake = self._D(fake.detach())
        loss_fake = F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake))
        loss_fake.backward()
        self.opt_d.step()

        # G step on the same fake batch; D's gradients from it are discarded (zeroed before the
        # next D step), so they need no all-reduce.
        self.opt_g.zero_grad(set_to_none=True)
        with _blocks.no_sync(self._D):
            out_g = self._D(fake)
            loss_g = F.binary_cross_entropy_with_logits(out_g, torch.ones_like(out_g))
            loss_g.backward()
        self.opt_g.step()

        with torch.no_grad():
            stats = torch.stack(
                [
                    loss_real + loss_fake,
                    loss_g,
                    torch.sigmoid(out_real).mean(),
                    torch.sigmoid(out_fake).mean(),
                ]
            ).tolist()
        return dict(zip(("loss_d", "loss_g", "d_real", "d_fake"), stats, strict=True))

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.options.nz, generator=generator)

    def generate(self, z: torch.Tensor, labels: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Images for ``z``; labels are ignored. ``truncation`` < 1 scales z towards the mean."""
        _blocks.check_latents(z, labels, self.options.nz, truncation, self.name)
        with _blocks.eval_mode(self.G):
            z = z.to(self.device, torch.float32) * truncation
            return self.G(z).contiguous()


@hookimpl
def register_gans(register):
    register(DCGAN)
