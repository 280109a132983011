"""WGAN-GP: Gulrajani, Ahmed, Arjovsky, Dumoulin and Courville, "Improved Training of Wasserstein
GANs", NeurIPS 2017 (arXiv:1704.00028), conditioned on the label.

Multi-process training (``--nproc``/torchrun): the gradient penalty needs a double backward, which
DistributedDataParallel does not support. So every forward and backward runs on the raw modules,
and the gradients are averaged with ``spec.dist.all_reduce_grads`` before each optimizer step.
The modules are handed to ``spec.dist.wrap`` once, only so that every process starts from rank
0's weights; the wrappers are never called, so DDP's own gradient hooks stay idle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from cxraug.errors import OptionsError
from cxraug.interfaces import GAN, GANSpec, PluginOptions
from pydantic import Field
from torch import nn

from cxraug_wgan_gp.nets import Critic, CriticNorm, Generator, gradient_penalty

MIN_SIZE = 16
MAX_SIZE = 256


class WGANGPOptions(PluginOptions):
    """Options of the ``wgan-gp`` GAN (defaults: the paper's Algorithm 1)."""

    nz: int = Field(128, ge=1, le=4096, description="Latent vector length.")
    embed_dim: int = Field(32, ge=1, le=1024, description="Generator label-embedding length (joined to z).")
    ngf: int = Field(64, ge=1, le=1024, description="Generator width at the finest resolution.")
    ndf: int = Field(64, ge=1, le=1024, description="Critic width at the finest resolution.")
    critic_norm: CriticNorm = Field(
        "layer", description="Critic normalisation: 'layer' (layer norm) or 'none'; never batch norm."
    )
    n_critic: int = Field(5, ge=1, le=100, description="Critic updates per generator update.")
    gp_lambda: float = Field(10.0, ge=0, le=1000, description="Gradient-penalty weight lambda.")
    lr_g: float = Field(1e-4, gt=0, le=1, description="Generator Adam learning rate.")
    lr_d: float = Field(1e-4, gt=0, le=1, description="Critic Adam learning rate.")
    beta1: float = Field(0.0, ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(0.9, ge=0, lt=1, description="Adam beta2.")


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """No gradients for ``module``'s parameters inside the block (the critic during a G update)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class WGANGP(GAN[WGANGPOptions]):
    """Class-conditional WGAN-GP: a DCGAN-like generator, a projection critic without batch norm.

    Each ``train_step`` is one critic update on the batch (loss D(fake) - D(real) + lambda * GP);
    every ``n_critic``-th step also updates the generator (loss -D(G(z))). The step counter is
    saved in ``extra_state``, so a resumed run updates G on the same steps as an uninterrupted one.
    """

    name: ClassVar[str] = "wgan-gp"
    description: ClassVar[str] = "WGAN-GP (Gulrajani et al. 2017), conditional, projection critic"
    conditional: ClassVar[bool] = True
    #: One G update per n_critic steps makes a step cheap; 2 kimg is a quick first look.
    default_kimg: ClassVar[float] = 2.0
    Options: ClassVar[type[WGANGPOptions]] = WGANGPOptions

    @classmethod
    def check_spec(cls, options: WGANGPOptions, spec: GANSpec) -> None:
        # called by cxraug before a run starts (and by --dry-run), and by __init__ below
        size = spec.image_size
        if not (MIN_SIZE <= size <= MAX_SIZE and size & (size - 1) == 0):
            raise OptionsError(
                f"GAN 'wgan-gp': image size {size} is not supported; "
                f"use a power of two between {MIN_SIZE} and {MAX_SIZE} (--size)"
            )
        if spec.num_classes < 1:
            raise OptionsError("GAN 'wgan-gp' is conditional and needs at least one label")

    def __init__(self, options: WGANGPOptions | None, spec: GANSpec) -> None:
        super().__init__(options, spec)
        o = self.options
        self.check_spec(o, spec)
        size = spec.image_size
        self.device = torch.device(spec.device)
        n = spec.num_classes
        self.G = Generator(o.nz, n, o.embed_dim, o.ngf, size, spec.channels).to(self.device)
        self.D = Critic(o.ndf, n, size, spec.channels, o.critic_norm).to(self.device)
        # Kept only for DDP's start-up broadcast of rank 0's weights; never called (module docstring).
        self._wrapped = (spec.dist.wrap(self.G), spec.dist.wrap(self.D))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))
        self.step = 0
        #: The loss of the last generator update (None before the first).
        self.last_loss_g: float | None = None

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One critic update, plus a generator update every ``n_critic`` steps.

        Logs ``loss_d``, ``gp`` (unscaled), ``wasserstein`` (mean D(real) - mean D(fake), the
        critic's estimate of the distance), ``loss_g`` (of the last G update; before the first,
        -mean D(fake) on this step's batch) and ``g_updated`` (1 on steps that updated G).
        """
        expected = (self.spec.channels, self.spec.image_size, self.spec.image_size)
        if real.dim() != 4 or tuple(real.shape[1:]) != expected:
            raise ValueError(f"wgan-gp.train_step: real must be (B, {expected}), got {tuple(real.shape)}")
        if labels.shape != (real.shape[0],):
            raise ValueError(
                f"wgan-gp.train_step: labels must be ({real.shape[0]},), got {tuple(labels.shape)}"
            )
        o, dist = self.options, self.spec.dist
        b = real.shape[0]
        update_g = (self.step + 1) % o.n_critic == 0
        self.step += 1

        # Critic: real and fake in one forward pass (no batch statistics to keep apart).
        with torch.no_grad():
            fake = self.G(torch.randn(b, o.nz, device=self.device), labels)
        self.opt_d.zero_grad(set_to_none=True)
        scores = self.D(torch.cat([real, fake]), torch.cat([labels, labels]))
        d_real, d_fake = scores[:b].mean(), scores[b:].mean()
        gp = gradient_penalty(self.D, real, fake, labels)
        loss_d = d_fake - d_real + o.gp_lambda * gp
        loss_d.backward()
        dist.all_reduce_grads(self.D)
        self.opt_d.step()

        scalars = [loss_d.detach(), gp.detach(), (d_real - d_fake).detach()]
        if update_g:
            self.opt_g.zero_grad(set_to_none=True)
            with _frozen(self.D):
                fake = self.G(torch.randn(b, o.nz, device=self.device), labels)
                loss_g = -self.D(fake, labels).mean()
                loss_g.backward()
            dist.all_reduce_grads(self.G)
            self.opt_g.step()
            scalars.append(loss_g.detach())
        elif self.last_loss_g is None:
            scalars.append(-d_fake.detach())
        values = torch.stack(scalars).tolist()  # the step's only device synchronisation
        if update_g:
            self.last_loss_g = values[3]
        loss_g_value = self.last_loss_g if self.last_loss_g is not None else values[3]
        return {
            "loss_d": values[0],
            "loss_g": loss_g_value,
            "gp": values[1],
            "wasserstein": values[2],
            "g_updated": float(update_g),
        }

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.options.nz, generator=generator)

    def generate(self, z: torch.Tensor, labels: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Images of class ``labels``; ``truncation`` < 1 scales z towards the mean."""
        nz = self.options.nz
        if z.dim() != 2 or z.shape[1] != nz:
            raise ValueError(f"wgan-gp.generate: z must be (N, {nz}), got {tuple(z.shape)}")
        if labels.shape != (z.shape[0],):
            raise ValueError(f"wgan-gp.generate: labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
        if not truncation > 0:
            raise OptionsError(f"wgan-gp: truncation must be > 0, got {truncation}")
        was_training = self.G.training
        self.G.eval()
        try:
            with torch.no_grad():
                z = z.to(self.device, torch.float32) * truncation
                return self.G(z, labels.to(self.device, torch.long)).contiguous()
        finally:
            self.G.train(was_training)

    def extra_state(self) -> dict[str, Any]:
        return {"step": self.step, "last_loss_g": self.last_loss_g}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        last = state.get("last_loss_g")
        self.last_loss_g = None if last is None else float(last)
