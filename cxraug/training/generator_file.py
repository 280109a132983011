"""An exported generator: one network's weights in a safetensors file whose header rebuilds it.

The file holds only tensors (safetensors cannot hold code) and, in its ``__metadata__`` header,
what ``cxraug generate --checkpoint FILE`` needs to rebuild the GAN without the run folder: the
architecture, its options, the image size, channels and labels, and which network the weights
belong to. The safetensors layout (8-byte little-endian header length, a JSON header, then the raw
tensor bytes) is the one documented at https://huggingface.co/docs/safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from cxraug.errors import DataError
from cxraug.fileio import atomic_write
from cxraug.interfaces import GAN, GANSpec
from cxraug.registry import Registry

#: ``format`` in the header: what says a safetensors file is a cxraug generator.
FORMAT = "cxraug-generator"
FORMAT_VERSION = "1"
#: The header keys ``load_generator_file`` needs (all strings; JSON where structured).
REQUIRED = ("format", "format_version", "arch", "network", "options", "spec")


def is_safetensors(path: Path) -> bool:
    """True when ``path`` starts like a safetensors file (header length, then a JSON object)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = Path(path).stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= size - 8


def generator_network(gan: GAN[Any]) -> str:
    """The network an export holds: the EMA generator where the GAN keeps one, else the generator."""
    nets = gan.networks()
    for name in ("G_ema", "G"):
        if name in nets:
            return name
    raise DataError(
        f"GAN {gan.name!r} names no G or G_ema network ({', '.join(nets)}); it cannot be exported"
    )


def header(gan: GAN[Any], arch: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``__metadata__`` a generator file carries (safetensors allows string values only)."""
    spec = gan.spec
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "network": generator_network(gan),
        "options": json.dumps(gan.options.model_dump(mode="json"), sort_keys=True),
        "spec": json.dumps(
            {"image_size": spec.image_size, "labels": list(spec.labels), "channels": spec.channels}
        ),
        **(extra or {}),
    }


def write_generator_file(path: Path, gan: GAN[Any], arch: str, extra: dict[str, str] | None = None) -> None:
    """The generator network of ``gan`` as a safetensors file (written atomically)."""
    from safetensors.torch import save

    meta = header(gan, arch, extra)
    module = gan.networks()[meta["network"]]
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    data = _sorted_header(save(tensors, metadata=meta))
    atomic_write(path, lambda f: f.write(data))


def _sorted_header(data: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes them in hash order, so
    two exports of one run would differ in bytes (and checksums) without this. Tensor offsets are
    relative to the end of the header, so only the header changes; it stays padded with spaces to
    a multiple of 8 bytes, as the format's writer does."""
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def read_header(path: Path) -> dict[str, str]:
    """The header of a generator file; a safetensors file from elsewhere is refused by name."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"checkpoint {path}: unreadable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise DataError(
            f"checkpoint {path}: a safetensors file, but not a generator written by `cxraug export` "
            "(its header has no format=cxraug-generator)"
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing or meta["format_version"] != FORMAT_VERSION:
        raise DataError(
            f"checkpoint {path}: generator file header lacks {', '.join(missing) or 'nothing'} "
            f"or has format_version {meta.get('format_version')!r} (expected {FORMAT_VERSION}); "
            "export it again with this cxraug version"
        )
    return meta


def load_generator_file(
    path: Path, registry: Registry, device: torch.device
) -> tuple[GAN[Any], str, list[str]]:
    """Rebuild the GAN a generator file came from: (gan, arch, labels); only its generator is loaded."""
    from safetensors.torch import load_file

    meta = read_header(path)
    try:
        options_d, spec_d = json.loads(meta["options"]), json.loads(meta["spec"])
        labels = [str(label) for label in spec_d["labels"]]
        image_size, channels = int(spec_d["image_size"]), int(spec_d.get("channels", 1))
        if not isinstance(options_d, dict):
            raise TypeError(f"options is a JSON {type(options_d).__name__}, not an object")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"checkpoint {path}: header options/spec unreadable ({exc})") from None
    cls = registry.gan(meta["arch"])
    try:
        options = cls.Options(**options_d)
    except ValidationError as exc:
        raise DataError(
            f"checkpoint {path}: its options no longer validate ({exc.errors()[0]['msg']})"
        ) from None
    spec = GANSpec(image_size=image_size, labels=labels, channels=channels, device=str(device))
    gan = cls(options, spec)
    try:
        gan.networks()[meta["network"]].load_state_dict(load_file(str(path), device="cpu"))
    except (KeyError, RuntimeError) as exc:
        # the first line only names the network; the second says which tensor and how
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise DataError(f"checkpoint {path}: weights do not match ({' '.join(lines[:2])[:300]})") from None
    return gan, meta["arch"], labels
