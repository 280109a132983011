"""GAN training throughput: the cxraug engine + `dcgan` plugin vs a plain PyTorch loop.

Target (issue #3): the engine adds no overhead, ratio engine/plain >= 1.0, for DCGAN at 64x64,
batch 64, nz 100, 64 filters. Also prints `stylegan2` images/s at 64 and 256 px.

    python benchmarks/bench_train_gan.py [--steps 20] [--device cpu|cuda] [--skip-stylegan2]

The plain loop is written here, independently of the plugin: the classic DCGAN networks, a
DataLoader over the same images, BCE-with-logits, Adam(2e-4, betas (0.5, 0.999)).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxraug.data.prepare import PrepareSettings, Source, prepare_dataset
from cxraug.plugins.datasets.phantom import PhantomAdapter
from cxraug.plugins.gans.dcgan import DCGAN
from cxraug.plugins.gans.stylegan2 import StyleGAN2
from cxraug.training.gan_run import GanSettings
from cxraug.training.gan_trainer import GANTrainer
from cxraug.workspace import Workspace


def plain_networks(nz: int = 100, nf: int = 64) -> tuple[nn.Module, nn.Module]:
    g = nn.Sequential(
        nn.ConvTranspose2d(nz, nf * 8, 4, 1, 0, bias=False),
        nn.BatchNorm2d(nf * 8),
        nn.ReLU(True),
        nn.ConvTranspose2d(nf * 8, nf * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(nf * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(nf * 4, nf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(nf * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(nf * 2, nf, 4, 2, 1, bias=False),
        nn.BatchNorm2d(nf),
        nn.ReLU(True),
        nn.ConvTranspose2d(nf, 1, 4, 2, 1, bias=False),
        nn.Tanh(),
    )
    d = nn.Sequential(
        nn.Conv2d(1, nf, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(nf, nf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(nf * 2),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(nf * 2, nf * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(nf * 4),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(nf * 4, nf * 8, 4, 2, 1, bias=False),
        nn.BatchNorm2d(nf * 8),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(nf * 8, 1, 4, 1, 0, bias=False),
    )
    return g, d


def plain_loop(images: torch.Tensor, steps: int, batch: int, device: torch.device) -> float:
    torch.manual_seed(0)
    g, d = (m.to(device) for m in plain_networks())
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loss = nn.BCEWithLogitsLoss()
    loader = DataLoader(TensorDataset(images), batch_size=batch, shuffle=True, drop_last=True)
    done, t0 = 0, None
    while done < steps + 2:
        for (real,) in loader:
            if done == 2:  # the first steps warm up allocators and kernels
                _sync(device)
                t0 = time.perf_counter()
            real = real.to(device).float() / 127.5 - 1
            z = torch.randn(real.shape[0], 100, 1, 1, device=device)
            fake = g(z)
            opt_d.zero_grad()
            out_real, out_fake = d(real).view(-1), d(fake.detach()).view(-1)
            ld = loss(out_real, torch.ones_like(out_real)) + loss(out_fake, torch.zeros_like(out_fake))
            ld.backward()
            opt_d.step()
            opt_g.zero_grad()
            out = d(fake).view(-1)
            lg = loss(out, torch.ones_like(out))
            lg.backward()
            opt_g.step()
            ld.item(), lg.item()
            done += 1
            if done == steps + 2:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine(
    cls, options, dataset, size: int, steps: int, batch: int, device: torch.device, tmp: Path
) -> float:
    """Images/s of the engine, timing only steps after the first two (same as the plain loop)."""
    rates = []
    for total in (2, steps + 2):
        config = GanSettings(
            arch=cls.name,
            data=dataset.name,
            classes=list(dataset.classes),
            size=size,
            batch_size=batch,
            epochs=None,
            kimg=total * batch / 1000,
            seed=0,
            device=device.type,
            snapshot_every=f"{10 * total}steps",
            per_class=False,
            log_every=10,
        )
        run = tmp / f"run-{cls.name}-{size}-{total}"
        run.mkdir()
        trainer = GANTrainer(cls, options, config, dataset, run, device=device)
        trainer._snapshot = lambda *a, **k: None  # type: ignore[method-assign]  # time training only
        _sync(device)
        t0 = time.perf_counter()
        trainer.train()
        _sync(device)
        rates.append(time.perf_counter() - t0)
    return steps * batch / (rates[1] - rates[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-stylegan2", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ws = Workspace(tmp / "ws")
        adapter = PhantomAdapter(
            PhantomAdapter.Options(n_per_class=400, size=64, classes=("covid", "normal"))
        )
        dataset = prepare_dataset(
            ws,
            [Source(adapter, None)],
            PrepareSettings(name="bench", size=64, ratios=(1.0, 0.0, 0.0)),
        ).dataset
        images = torch.from_numpy(dataset.images[dataset.indices("train")].copy())[:, None]
        batch = 64
        plain = plain_loop(images, args.steps, batch, device)
        ours = engine(DCGAN, DCGAN.Options(), dataset, 64, args.steps, batch, device, tmp)
        print(
            f"device: {device} ({torch.get_num_threads()} CPU threads), "
            f"{args.steps} timed steps, batch {batch}"
        )
        print(f"dcgan 64px plain PyTorch loop: {plain:8.1f} img/s")
        print(f"dcgan 64px cxraug engine:      {ours:8.1f} img/s")
        ratio = ours / plain
        print(f"ratio engine/plain: {ratio:.3f} (target >= 1.0) -> {'PASS' if ratio >= 1.0 else 'FAIL'}")
        if not args.skip_stylegan2:
            for size, steps in ((64, max(2, args.steps // 4)), (256, 2)):
                rate = engine(StyleGAN2, StyleGAN2.Options(), dataset, size, steps, 8, device, tmp)
                print(f"stylegan2 {size}px (default options, batch 8): {rate:8.2f} img/s")


if __name__ == "__main__":
    main()
