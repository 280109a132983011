"""AC-GAN: Odena, Olah and Shlens, "Conditional Image Synthesis with Auxiliary Classifier GANs",
ICML 2017 (arXiv:1610.09585); applied to chest X-rays as CovidGAN by Waheed et al., "CovidGAN:
Data Augmentation Using Auxiliary Classifier GAN for Improved Covid-19 Detection", IEEE Access
8, 2020.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cxraug import hookimpl
from cxraug.interfaces import GAN, GANSpec, PluginOptions
from cxraug.plugins.gans import _blocks


class ACGANOptions(PluginOptions):
    """Options of the ``acgan`` GAN."""

    latent_dim: int = Field(100, ge=1, le=4096, description="Latent vector length.")
    label_input: Literal["multiply", "concat"] = Field(
        "multiply",
        description="How G takes the class: z times a label embedding, or z concatenated with it.",
    )
    ngf: int = Field(64, ge=1, le=1024, description="Generator width at the finest resolution.")
    ndf: int = Field(64, ge=1, le=1024, description="Discriminator width at the finest resolution.")
    aux_weight: float = Field(1.0, ge=0, le=100, description="Weight of the auxiliary classification loss.")
    lr_g: float = Field(2e-4, gt=0, le=1, description="Generator Adam learning rate.")
    lr_d: float = Field(2e-4, gt=0, le=1, description="Discriminator Adam learning rate.")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2.")
    channels_last: bool = Field(True, description="Use channels_last memory format on CUDA.")


class ACGANGenerator(nn.Module):
    """z and a label -> label-embedded latent -> DCGAN generator."""

    def __init__(
        self, latent_dim: int, num_classes: int, mode: str, ngf: int, size: int, channels: int
    ) -> None:
        super().__init__()
        self.mode = mode
        self.embed = nn.Embedding(num_classes, latent_dim)
        nz = latent_dim * (2 if mode == "concat" else 1)
        self.net = _blocks.DCGANGenerator(nz, ngf, size, channels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        e = self.embed(labels)
        return self.net(z * e if self.mode == "multiply" else torch.cat([z, e], dim=1))


class ACGAN(GAN[ACGANOptions]):
    """Auxiliary-classifier GAN (Odena et al. 2017; CovidGAN, Waheed et al. 2020).

    G is DCGAN's generator fed a label-embedded latent; D is DCGAN's discriminator with a second,
    class head. D minimises adversarial BCE plus cross-entropy on real and fake images, G
    adversarial BCE plus cross-entropy on its fakes. Fake classes are drawn uniformly.
    """

    name: ClassVar[str] = "acgan"
    description: ClassVar[str] = "AC-GAN / CovidGAN: conditional G, D with an auxiliary classifier"
    conditional: ClassVar[bool] = True
    #: Length of a run without --kimg/--epochs: ~2 min at 64 px on a laptop CPU.
    default_kimg: ClassVar[float] = 4.0
    Options: ClassVar[type[ACGANOptions]] = ACGANOptions

    @classmethod
    def check_spec(cls, options: ACGANOptions, spec: GANSpec) -> None:
        _blocks.check_spec(spec, cls.name, conditional=True)

    def __init__(self, options: ACGANOptions | None, spec: GANSpec) -> None:
        super().__init__(options, spec)
        o = self.options
        _blocks.check_spec(spec, self.name, conditional=True)
        self.device = torch.device(spec.device)
        self._channels_last = o.channels_last and self.device.type == "cuda"
        self.num_classes = spec.num_classes

        self.G = _blocks.prepare(
            ACGANGenerator(
                o.latent_dim, spec.num_classes, o.label_input, o.ngf, spec.image_size, spec.channels
            ),
            self.device,
            o.channels_last,
        )
        self.D = _blocks.prepare(
            _blocks.DCGANDiscriminator(o.ndf, spec.image_size, spec.channels, heads=(1, spec.num_classes)),
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
        b = real.shape[0]
        w = self.options.aux_weight
        z = torch.randn(b, self.options.latent_dim, device=self.device)
        fake_labels = torch.randint(self.num_classes, (b,), device=self.device)
        fake = self._G(z, fake_labels)

        # Real and fake halves apart, as in DCGAN; the fake half's backward does the DDP sync.
        self.opt_d.zero_grad(set_to_none=True)
        with _blocks.no_sync(self._D):
            adv_real, cls_real = self._D(real)
            adv_real = adv_real.view(-1)
            aux_real = F.cross_entropy(cls_real, labels)
            loss_real = F.binary_cross_entropy_with_logits(adv_real, torch.ones_like(adv_real)) + w * aux_real
            loss_real.backward()
        adv_fake, cls_fake = self._D(fake.detach())
        adv_fake = adv_fake.view(-1)
        aux_fake = F.cross_entropy(cls_fake, fake_labels)
        loss_fake = F.binary_cross_entropy_with_logits(adv_fake, torch.zeros_like(adv_fake)) + w * aux_fake
        loss_fake.backward()
        self.opt_d.step()

        self.opt_g.zero_grad(set_to_none=True)
        with _blocks.no_sync(self._D):
            adv_g, cls_g = self._D(fake)
            adv_g = adv_g.view(-1)
            loss_g = F.binary_cross_entropy_with_logits(adv_g, torch.ones_like(adv_g)) + w * F.cross_entropy(
                cls_g, fake_labels
            )
            loss_g.backward()
        self.opt_g.step()

        with torch.no_grad():
            stats = torch.stack(
                [
                    loss_real + loss_fake,
                    loss_g,
                    torch.sigmoid(adv_real).mean(),
                    torch.sigmoid(adv_fake).mean(),
                    aux_real,
                    aux_fake,
                    (cls_real.argmax(1) == labels).float().mean(),
                ]
            ).tolist()
        keys = ("loss_d", "loss_g", "d_real", "d_fake", "aux_real", "aux_fake", "acc_real")
        return dict(zip(keys, stats, strict=True))

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.options.latent_dim, generator=generator)

    def generate(self, z: torch.Tensor, labels: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Images of class ``labels``; ``truncation`` < 1 scales z towards the mean."""
        _blocks.check_latents(z, labels, self.options.latent_dim, truncation, self.name)
        with _blocks.eval_mode(self.G):
            z = z.to(self.device, torch.float32) * truncation
            return self.G(z, labels.to(self.device, torch.long)).contiguous()


@hookimpl
def register_gans(register):
    register(ACGAN)
