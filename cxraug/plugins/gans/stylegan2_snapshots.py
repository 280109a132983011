"""Map NVlabs and rosinality StyleGAN2 snapshots onto cxraug's StyleGAN2 networks.

The files are read by :mod:`cxraug.snapshotio` (nothing in them runs). Tensor names and layouts
come from the public code: NVlabs ``training/networks.py`` (stylegan2-ada-pytorch; the stylegan2
configuration of stylegan3 uses the same module names) and rosinality ``model.py``
(stylegan2-pytorch). The table in ``docs/pretrained-stylegan.md`` lists every mapping.

Both formats store weights the way cxraug does (equalized learning rate: N(0, 1) values scaled by
``lr_mul / sqrt(fan_in)`` at run time; biases scaled by ``lr_mul``), so most tensors are copied.
The adapted ones:

* **RGB -> grey, generator toRGB** (every block): the three output rows of the 1x1 weight and the
  three biases are combined with the ITU-R BT.601 luma weights, grey = 0.299 R + 0.587 G + 0.114 B.
  The skip generator's image is the sum of every block's toRGB output (upsampled, a linear
  operation), so this gives exactly the luma of the RGB image the snapshot would draw.
* **RGB -> grey, discriminator fromRGB** (first block): the three input-channel kernels are summed.
  A grey image repeated to RGB (R = G = B = Y), which is what a pretrained D saw of grey content,
  gives that layer the response sum_c w[:, c] * Y, so the summed kernel responds to a one-channel
  image exactly as the RGB kernel did to its RGB copy.
* **Upsampling convolutions are flipped 180 degrees**: NVlabs (``conv2d_resample`` with
  ``flip_weight=False`` for ``up=2``) and rosinality (``conv_transpose2d``) compute a true
  convolution there, cxraug a cross-correlation after bilinear upsampling.
* Mapping layers are rescaled when the snapshot's learning-rate multiplier differs from
  ``mapping_lr_mul``; rosinality's ``[1, O, I, k, k]`` weights and ``[1, 1, r, r]`` noise lose
  their leading ones.

Left at initial values: what cxraug has and the snapshot lacks (label embeddings for labels the
snapshot was not trained on, the label-embedding columns of the first mapping layer, D's
projection). Not used: the resampling filters (cxraug resamples with a bilinear/box filter, so
a transferred network starts close to, not identical with, the snapshot) and NVlabs D's
label-mapping network.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from cxraug.errors import DataError
from cxraug.plugins.gans.stylegan2_nets import channels_at
from cxraug.snapshotio import NVLABS_PKL, ROSINALITY_PT, ForeignSnapshot

#: ITU-R BT.601 luma weights for R, G, B.
LUMA = (0.299, 0.587, 0.114)
#: The mapping learning-rate multiplier both projects default to (``lr_multiplier`` / ``lr_mlp``).
DEFAULT_LR_MUL = 0.01

RULE_TORGB = "RGB->grey: luma 0.299/0.587/0.114 of the 3 output rows"
RULE_FROMRGB = "RGB->grey: sum of the 3 input-channel kernels"
RULE_FLIP = "flipped 180 degrees (true convolution -> cross-correlation)"


@dataclass
class SnapshotShape:
    """The architecture a snapshot's tensors describe."""

    resolution: int
    img_channels: int
    z_dim: int
    w_dim: int
    c_dim: int
    mapping_layers: int
    mapping_lr_mul: float
    channels: dict[int, int]  # resolution -> feature maps

    def options(self) -> dict[str, Any]:
        """cxraug StyleGAN2 options that rebuild this architecture (DataError if none can)."""
        top = max(self.channels.values())
        for base in sorted({c * r for r, c in self.channels.items()}):
            if all(min(base // r, top) == c for r, c in self.channels.items()):
                return {
                    "z_dim": self.z_dim,
                    "w_dim": self.w_dim,
                    "mapping_layers": self.mapping_layers,
                    "mapping_lr_mul": self.mapping_lr_mul,
                    "channel_base": base,
                    "channel_max": top,
                }
        raise DataError(
            f"feature maps per resolution {self.channels} follow no min(channel_base // r, "
            "channel_max) rule, which cxraug's StyleGAN2 needs"
        )


@dataclass
class Entry:
    """One cxraug tensor the snapshot provides (``rule`` empty when copied as is)."""

    target: str  # "G.mapping.layers.0.weight"
    value: torch.Tensor
    source: str  # "G_ema.mapping.fc0.weight"
    rule: str = ""


@dataclass
class TransferReport:
    """Which tensors were loaded, adapted or left at their initial values."""

    snapshot: str
    format: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    initial: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "format": self.format,
            "counts": {
                "loaded": len(self.loaded),
                "adapted": len(self.adapted),
                "initial": len(self.initial),
                "unused": len(self.unused),
            },
            "loaded": self.loaded,
            "adapted": self.adapted,
            "initial": self.initial,
            "unused": self.unused,
        }

    def summary(self) -> str:
        line = (
            f"{len(self.loaded)} tensors loaded, {len(self.adapted)} adapted, "
            f"{len(self.initial)} left at initial values"
        )
        if self.initial:
            line += f" (e.g. {self.initial[0]})"
        return line


# ----------------------------------------------------------------------------------- shapes


def _need(tensors: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in tensors:
        raise DataError(f"snapshot {where}: tensor {key} is missing; not a StyleGAN2 generator as published")
    return tensors[key]


def describe(snap: ForeignSnapshot) -> SnapshotShape:
    """Resolution, latent sizes and feature maps of the snapshot's (EMA) generator."""
    where = str(snap.path)
    if snap.format == NVLABS_PKL:
        g = snap.networks["G_ema"]
        if any(k.startswith("synthesis.input.") for k in g):
            raise DataError(
                f"snapshot {where}: a StyleGAN3 (alias-free, config t/r) generator; cxraug's StyleGAN2 "
                "reads stylegan2 configurations only (stylegan2-ada-pytorch, or stylegan3 --cfg=stylegan2)"
            )
        res = sorted(
            int(m.group(1)) for k in g if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", k))
        )
        if not res:
            raise DataError(f"snapshot {where}: no synthesis blocks in G_ema; not a StyleGAN2 generator")
        channels = {r: int(g[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in res}
        img_channels = int(_need(g, f"synthesis.b{res[-1]}.torgb.weight", where).shape[0])
        n = sum(1 for k in g if re.fullmatch(r"mapping\.fc\d+\.weight", k))
        first, last = _need(g, "mapping.fc0.weight", where), _need(g, f"mapping.fc{n - 1}.weight", where)
        c_dim = int(g["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in g else 0
        embed = int(g["mapping.embed.weight"].shape[0]) if c_dim else 0
        w_dim = int(last.shape[0])
        rec = snap.records["G_ema"].child("mapping.fc0")
        lr_mul = float(rec.attr("bias_gain", DEFAULT_LR_MUL)) if rec is not None else DEFAULT_LR_MUL
        hidden = {int(g[f"mapping.fc{i}.weight"].shape[0]) for i in range(n)}
        if hidden != {w_dim} or (c_dim and embed != w_dim):
            raise DataError(
                f"snapshot {where}: its mapping network has layers or a label embedding of widths "
                f"{sorted(hidden | ({embed} if c_dim else set()))}; cxraug's has every width = w_dim"
            )
        return SnapshotShape(
            resolution=res[-1],
            img_channels=img_channels,
            z_dim=int(first.shape[1]) - embed,
            w_dim=w_dim,
            c_dim=c_dim,
            mapping_layers=n,
            mapping_lr_mul=lr_mul,
            channels=channels,
        )
    g = snap.networks["g_ema"]
    n_rgb = sum(1 for k in g if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
    channels = {4: int(_need(g, "input.input", where).shape[1])}
    for k in range(n_rgb):
        channels[8 * 2**k] = int(_need(g, f"convs.{2 * k + 1}.conv.weight", where).shape[1])
    n = sum(1 for k in g if re.fullmatch(r"style\.\d+\.weight", k))
    first = _need(g, "style.1.weight", where)
    return SnapshotShape(
        resolution=4 * 2**n_rgb,
        img_channels=int(_need(g, "to_rgb1.conv.weight", where).shape[1]),
        z_dim=int(first.shape[1]),
        w_dim=int(first.shape[0]),
        c_dim=0,
        mapping_layers=n,
        mapping_lr_mul=DEFAULT_LR_MUL,
        channels=channels,
    )


# ------------------------------------------------------------------------------- conversion


def _rgb_rows(w: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Combine 3 output rows (dim 0) into one with the luma weights; 1 row is kept as is."""
    if w.shape[0] == 1:
        return w, ""
    if w.shape[0] != 3:
        raise DataError(f"toRGB of {w.shape[0]} channels: only RGB (3) or grey (1) snapshots map onto grey")
    luma = torch.tensor(LUMA, dtype=w.dtype).reshape(3, *([1] * (w.dim() - 1)))
    return (w * luma).sum(dim=0, keepdim=True), RULE_TORGB


def _rgb_inputs(w: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Sum 3 input-channel kernels (dim 1); 1 channel is kept as is."""
    if w.shape[1] == 1:
        return w, ""
    if w.shape[1] != 3:
        raise DataError(f"fromRGB of {w.shape[1]} channels: only RGB (3) or grey (1) snapshots map onto grey")
    return w.sum(dim=1, keepdim=True), RULE_FROMRGB


def _mapping_scale(shape: SnapshotShape, lr_mul: float) -> tuple[float, str]:
    if math.isclose(shape.mapping_lr_mul, lr_mul):
        return 1.0, ""
    return shape.mapping_lr_mul / lr_mul, f"rescaled by lr_mul {shape.mapping_lr_mul:g} / {lr_mul:g}"


class _Entries:
    """The entries of one network: ``add`` maps a snapshot tensor (when the snapshot has it) onto a
    cxraug tensor, with the rule applied, if any."""

    def __init__(self, tensors: dict[str, torch.Tensor], src: str, dst: str) -> None:
        self.tensors, self.src, self.dst = tensors, src, dst
        self.entries: list[Entry] = []

    def add(self, target: str, source: str, value: torch.Tensor | None = None, rule: str = "") -> None:
        if source in self.tensors:
            tensor = self.tensors[source] if value is None else value
            self.entries.append(Entry(f"{self.dst}.{target}", tensor, f"{self.src}.{source}", rule))

    def mapping(self, key: str, shape: SnapshotShape, lr_mul: float) -> None:
        """The mapping network's layers, ``key`` naming layer i's tensors (``{i}``, ``{p}``), with
        the weights rescaled when the learning-rate multipliers differ (see ``_mapping_scale``)."""
        scale, rule = _mapping_scale(shape, lr_mul)
        for i in range(shape.mapping_layers):
            for p in ("weight", "bias"):
                source = key.format(i=i, i_plus_1=i + 1, p=p)
                if source in self.tensors:
                    self.add(f"mapping.layers.{i}.{p}", source, self.tensors[source] * scale, rule)


def _nvlabs_g(
    t: dict[str, torch.Tensor], src: str, dst: str, shape: SnapshotShape, lr_mul: float
) -> list[Entry]:
    out = _Entries(t, src, dst)
    add = out.add

    out.mapping("mapping.fc{i}.{p}", shape, lr_mul)
    add("mapping.embed.weight", "mapping.embed.weight")
    add("mapping.embed.bias", "mapping.embed.bias")
    add("mapping.w_avg", "mapping.w_avg")
    for i, r in enumerate(sorted(shape.channels)):
        b, d = f"synthesis.b{r}", f"synthesis.blocks.{i}"
        add(f"{d}.const", f"{b}.const")
        for conv in ("conv0", "conv1"):
            for p in ("affine.weight", "affine.bias", "bias", "noise_strength", "noise_const"):
                add(f"{d}.{conv}.{p}", f"{b}.{conv}.{p}")
            key = f"{b}.{conv}.weight"
            if key in t:
                flip = conv == "conv0"
                add(
                    f"{d}.{conv}.weight",
                    key,
                    t[key].flip(2, 3) if flip else t[key],
                    RULE_FLIP if flip else "",
                )
        add(f"{d}.torgb.affine.weight", f"{b}.torgb.affine.weight")
        add(f"{d}.torgb.affine.bias", f"{b}.torgb.affine.bias")
        for p in ("weight", "bias"):
            key = f"{b}.torgb.{p}"
            if key in t:
                value, how = _rgb_rows(t[key])
                add(f"{d}.torgb.{p}", key, value, how)
    return out.entries


def _nvlabs_d(t: dict[str, torch.Tensor], src: str, shape: SnapshotShape) -> list[Entry]:
    out = _Entries(t, src, "D")
    add = out.add

    for i, r in enumerate(sorted(shape.channels, reverse=True)[:-1]):
        b, d = f"b{r}", f"blocks.{i}"
        if f"{b}.fromrgb.weight" in t:
            value, how = _rgb_inputs(t[f"{b}.fromrgb.weight"])
            add(f"{d}.fromrgb.weight", f"{b}.fromrgb.weight", value, how)
            add(f"{d}.fromrgb.bias", f"{b}.fromrgb.bias")
        for p in ("conv0.weight", "conv0.bias", "conv1.weight", "conv1.bias", "skip.weight"):
            add(f"{d}.{p}", f"{b}.{p}")
    for layer in ("conv", "fc", "out"):
        add(f"{layer}.weight", f"b4.{layer}.weight")
        add(f"{layer}.bias", f"b4.{layer}.bias")
    return out.entries


def _rosinality_g(
    t: dict[str, torch.Tensor], src: str, dst: str, shape: SnapshotShape, lr_mul: float, extra: dict[str, Any]
) -> list[Entry]:
    out = _Entries(t, src, dst)
    add = out.add

    out.mapping("style.{i_plus_1}.{p}", shape, lr_mul)
    latent_avg = extra.get("latent_avg")
    if dst == "G_ema" and isinstance(latent_avg, torch.Tensor):
        out.entries.append(Entry(f"{dst}.mapping.w_avg", latent_avg.reshape(-1), "latent_avg"))
    add("synthesis.blocks.0.const", "input.input", t.get("input.input", torch.empty(0)).squeeze(0))

    def styled(src_conv: str, d: str, noise: int, flip: bool) -> None:
        w = t.get(f"{src_conv}.conv.weight")
        if w is not None:
            w = w.squeeze(0)
            add(
                f"{d}.weight",
                f"{src_conv}.conv.weight",
                w.flip(2, 3) if flip else w,
                RULE_FLIP if flip else "",
            )
        add(f"{d}.affine.weight", f"{src_conv}.conv.modulation.weight")
        add(f"{d}.affine.bias", f"{src_conv}.conv.modulation.bias")
        add(f"{d}.bias", f"{src_conv}.activate.bias")
        if f"{src_conv}.noise.weight" in t:
            add(f"{d}.noise_strength", f"{src_conv}.noise.weight", t[f"{src_conv}.noise.weight"].reshape(()))
        key = f"noises.noise_{noise}"
        if key in t:
            add(f"{d}.noise_const", key, t[key].reshape(t[key].shape[-2:]))

    def to_rgb(src_rgb: str, d: str) -> None:
        add(f"{d}.affine.weight", f"{src_rgb}.conv.modulation.weight")
        add(f"{d}.affine.bias", f"{src_rgb}.conv.modulation.bias")
        if f"{src_rgb}.conv.weight" in t:
            value, how = _rgb_rows(t[f"{src_rgb}.conv.weight"].squeeze(0))
            add(f"{d}.weight", f"{src_rgb}.conv.weight", value, how)
        if f"{src_rgb}.bias" in t:
            value, how = _rgb_rows(t[f"{src_rgb}.bias"].reshape(-1))
            add(f"{d}.bias", f"{src_rgb}.bias", value.reshape(-1), how)

    styled("conv1", "synthesis.blocks.0.conv1", 0, False)
    to_rgb("to_rgb1", "synthesis.blocks.0.torgb")
    for k in range(len(shape.channels) - 1):
        d = f"synthesis.blocks.{k + 1}"
        styled(f"convs.{2 * k}", f"{d}.conv0", 2 * k + 1, True)
        styled(f"convs.{2 * k + 1}", f"{d}.conv1", 2 * k + 2, False)
        to_rgb(f"to_rgbs.{k}", f"{d}.torgb")
    return out.entries


def _rosinality_d(t: dict[str, torch.Tensor], shape: SnapshotShape) -> list[Entry]:
    out = _Entries(t, "d", "D")
    add = out.add

    if "convs.0.0.weight" in t:
        value, how = _rgb_inputs(t["convs.0.0.weight"])
        add("blocks.0.fromrgb.weight", "convs.0.0.weight", value, how)
    add("blocks.0.fromrgb.bias", "convs.0.1.bias")
    for i in range(len(shape.channels) - 1):
        s, d = f"convs.{i + 1}", f"blocks.{i}"
        add(f"{d}.conv0.weight", f"{s}.conv1.0.weight")
        add(f"{d}.conv0.bias", f"{s}.conv1.1.bias")
        add(f"{d}.conv1.weight", f"{s}.conv2.1.weight")
        add(f"{d}.conv1.bias", f"{s}.conv2.2.bias")
        add(f"{d}.skip.weight", f"{s}.skip.1.weight")
    add("conv.weight", "final_conv.0.weight")
    add("conv.bias", "final_conv.1.bias")
    add("fc.weight", "final_linear.0.weight")
    add("fc.bias", "final_linear.0.bias")
    add("out.weight", "final_linear.1.weight")
    add("out.bias", "final_linear.1.bias")
    return out.entries


def entries(snap: ForeignSnapshot, shape: SnapshotShape, lr_mul: float) -> list[Entry]:
    """Every cxraug tensor (``G.*``, ``G_ema.*``, ``D.*``) the snapshot provides."""
    n = snap.networks
    if snap.format == NVLABS_PKL:
        out = _nvlabs_g(n["G_ema"], "G_ema", "G_ema", shape, lr_mul)
        g_src = "G" if "G" in n else "G_ema"
        out += _nvlabs_g(n[g_src], g_src, "G", shape, lr_mul)
        if "D" in n:
            out += _nvlabs_d(n["D"], "D", shape)
        return out
    if snap.format == ROSINALITY_PT:
        out = _rosinality_g(n["g_ema"], "g_ema", "G_ema", shape, lr_mul, snap.extra)
        g_src = "g" if "g" in n else "g_ema"
        out += _rosinality_g(n[g_src], g_src, "G", shape, lr_mul, snap.extra)
        if "d" in n:
            out += _rosinality_d(n["d"], shape)
        return out
    raise DataError(f"snapshot {snap.path}: format {snap.format!r} has no StyleGAN2 mapping")


# ----------------------------------------------------------------------------------- loading


def check_compatible(snap: ForeignSnapshot, shape: SnapshotShape, options: Any, image_size: int) -> None:
    """DataError naming what to change when the snapshot cannot start this StyleGAN2."""
    where = f"snapshot {snap.path}"
    if shape.resolution != image_size:
        raise DataError(
            f"{where}: holds a {shape.resolution}x{shape.resolution} generator, this run trains at "
            f"{image_size}x{image_size}; pass --size {shape.resolution} (the dataset is resized) or use a "
            f"snapshot of resolution {image_size}"
        )
    wanted = shape.options()
    differs = []
    for key in ("z_dim", "w_dim", "mapping_layers"):
        if getattr(options, key) != wanted[key]:
            differs.append(f"--opt {key}={wanted[key]}")
    for r, c in shape.channels.items():
        if channels_at(r, options.channel_base, options.channel_max) != c:
            differs += [
                f"--opt channel_base={wanted['channel_base']}",
                f"--opt channel_max={wanted['channel_max']}",
            ]
            break
    if differs:
        raise DataError(
            f"{where}: its networks need {' '.join(differs)} (their mapping depth, w_dim or widths differ)"
        )


def load_into(
    networks: dict[str, torch.nn.Module],
    snap: ForeignSnapshot,
    shape: SnapshotShape,
    lr_mul: float,
    z_dim: int,
) -> TransferReport:
    """Copy the mapped tensors into ``networks`` (G, G_ema, D) and say what happened to each."""
    report = TransferReport(str(snap.path), snap.format)
    states = {name: module.state_dict() for name, module in networks.items()}
    provided = entries(snap, shape, lr_mul)
    used_sources: set[str] = set()
    for e in provided:
        net, key = e.target.split(".", 1)
        own = states.get(net, {}).get(key)
        if own is None:
            continue
        value = e.value.detach().to(torch.float32)
        rule = e.rule
        if key == "mapping.layers.0.weight" and own.shape != value.shape and own.shape[0] == value.shape[0]:
            # one side is conditional: the z columns come first in both (cat([z, embed(c)]))
            merged = own.clone()
            merged[:, :z_dim] = value[:, :z_dim]
            value = merged
            rule = "z columns copied; label-embedding columns left at initial values"
        if own.shape != value.shape:
            continue
        states[net][key] = value.to(own.device, own.dtype).contiguous()
        used_sources.add(e.source)
        if rule:
            report.adapted[e.target] = rule
        else:
            report.loaded.append(e.target)
    for name, module in networks.items():
        module.load_state_dict(states[name])
        done = set(report.loaded) | set(report.adapted)
        report.initial += [f"{name}.{k}" for k in states[name] if f"{name}.{k}" not in done]
    for net, tensors in snap.networks.items():
        report.unused += [f"{net}.{k}" for k in tensors if f"{net}.{k}" not in used_sources]
    if not report.loaded and not report.adapted:
        raise DataError(f"snapshot {snap.path}: none of its tensors fit this network")
    return report


@torch.no_grad()
def estimate_w_avg(mapping: torch.nn.Module, z_dim: int, n: int = 4096) -> torch.Tensor:
    """The mean w over ``n`` fixed latents (rosinality's ``mean_latent``), for truncation."""
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(0))
    device = next(mapping.parameters()).device
    w = mapping(z.to(device), torch.zeros(n, dtype=torch.long, device=device))
    return w[:, 0].mean(dim=0)
