"""Pieces the built-in classifiers share: grayscale ImageNet input, a trunk + head network, and
getting torchvision's ImageNet weights from the hub cache, a download or a local ``--weights`` file.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import torch
from pydantic import Field
from torch import nn
from torchvision.models import WeightsEnum

from cxraug.errors import CxrError, OptionsError
from cxraug.fileio import check_online
from cxraug.interfaces import Classifier, O, PluginOptions

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: How many mismatched keys an error message lists per kind of mismatch.
_SHOW_KEYS = 5


class FreezeOptions(PluginOptions):
    """Options of a fine-tuned ImageNet classifier."""

    freeze_backbone: bool = Field(
        False, description="Train only the new head; the ImageNet backbone stays fixed (and in eval mode)."
    )


class TransferHeadOptions(PluginOptions):
    """Options of the transfer-learning classifiers with the published 1024-64 dense head."""

    freeze_backbone: bool = Field(
        True,
        description="Train only the dense head, as published; false fine-tunes the backbone as well.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each hidden dense layer.")


class ImageNetInput(nn.Module):
    """(B, 1, S, S) in [0, 1] -> (B, 3, S, S) normalised the way the ImageNet weights expect.

    The grey channel is broadcast (a view, not three copies) and scaled in a single op, so the only
    new tensor is the normalised output the first convolution needs anyway. 3-channel input passes
    through the same normalisation.
    """

    def __init__(
        self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
    ) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # Not persistent: constants, so checkpoints hold only learned tensors.
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)
        self.scale: torch.Tensor
        self.shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"classifier input must be (B, 1, S, S) or (B, 3, S, S), got {tuple(x.shape)}")
        return torch.addcmul(self.shift, x.expand(-1, 3, -1, -1), self.scale)


class TransferNet(nn.Module):
    """``normalize`` -> ``backbone`` (the ImageNet trunk) -> ``head`` (new, trained for the labels).

    With ``frozen`` the backbone's parameters do not require gradients and it stays in eval mode
    under ``train()``, so its batch-norm statistics keep their ImageNet values.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        frozen: bool = False,
        normalize: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else ImageNetInput()
        self.backbone = backbone
        self.head = head
        self.frozen = frozen
        if frozen:
            backbone.requires_grad_(False)
            backbone.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output (what the head sees) for a (B, 1, S, S) batch in [0, 1]."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self


def dense_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Flatten -> Dense(1024) -> ReLU -> Dense(64) -> ReLU -> Dense(num_classes), the published head.

    Dropout layers are always present (identity at p = 0) so checkpoint keys do not depend on it.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1024, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(64, num_classes),
    )


def check_num_classes(num_classes: int, plugin: str) -> None:
    """Guard against an engine bug: a head needs at least one output."""
    if num_classes < 1:
        raise ValueError(f"classifier {plugin!r}: num_classes must be at least 1, got {num_classes}")


# ----------------------------------------------------------------------------------- weights


def weights_filename(weights: WeightsEnum) -> str:
    """The file name torchvision stores ``weights`` under in the hub cache (the URL's basename)."""
    return os.path.basename(urlparse(weights.url).path)


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision looks for ``weights`` before downloading: torch.hub.get_dir()/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_filename(weights)


def download_imagenet(weights: WeightsEnum, plugin: str) -> dict[str, torch.Tensor]:
    """The ImageNet state_dict from the hub cache, downloading it when missing; CxrError when offline."""
    cached = cached_weights_path(weights)
    try:
        if not cached.is_file():
            check_online(weights.url)
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if cached.is_file():
            what = f"{cached} exists but could not be read ({reason}); delete it so it is downloaded again"
        else:
            what = (
                f"could not download {weights.url} ({reason}); download it where there is internet "
                f"and copy it to {cached} (torchvision then uses it without downloading)"
            )
        raise CxrError(
            f"classifier {plugin!r}: ImageNet weights {weights_filename(weights)} not available: {what}, "
            f"or pass --weights PATH to that file, or train from scratch with --no-pretrained"
        ) from exc
    return dict(state)


def read_weights_file(path: Path, plugin: str, expected: WeightsEnum) -> dict[str, torch.Tensor]:
    """A state_dict from a local file: plain, or under a "state_dict"/"model" key; OptionsError if not."""
    path = Path(path).expanduser()
    hint = (
        f"give the {plugin} ImageNet weights ({weights_filename(expected)}) or a state_dict saved "
        f"with torch.save(model.state_dict(), PATH) from the torchvision model"
    )
    if not path.is_file():
        raise OptionsError(f"--weights {path}: no such file; {hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which is not safe advice for a CLI.
        raise OptionsError(
            f"--weights {path}: not a PyTorch weights file of tensors only (a pickled model, or "
            f"another format; it is read with weights_only=True for safety); {hint}"
        ) from None
    except Exception as exc:  # any failure here means the user's file is not what we can read
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise OptionsError(f"--weights {path}: not a PyTorch weights file ({reason}); {hint}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise OptionsError(f"--weights {path}: holds a {type(obj).__name__}, not a state_dict; {hint}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise OptionsError(
            f"--weights {path}: not a state_dict (entries that are not named tensors: "
            f"{', '.join(map(str, bad[:_SHOW_KEYS]))}); {hint}"
        )
    state = dict(obj)
    # Saved from a DataParallel/DDP wrapper.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_and_load(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    plugin: str,
    error: type[CxrError] = OptionsError,
) -> None:
    """Load ``state`` into ``model`` strictly; ``error`` names ``source`` and the first mismatched keys."""
    own = model.state_dict()
    # Checkpoints from before batch-norm counted batches lack these; torch fills them in.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else ""
            problems.append(f"{label}: {', '.join(keys[:_SHOW_KEYS])}{more}")
    if not problems:
        try:
            model.load_state_dict(state, strict=True)
            return
        except RuntimeError as exc:
            problems.append(str(exc).splitlines()[0])
    raise error(
        f"{source}: not the weights of the torchvision {type(model).__name__} that {plugin!r} uses "
        f"({'; '.join(problems)})"
    )


def torchvision_model(
    plugin: str,
    make: Callable[[int, Mapping[str, torch.Tensor] | None], nn.Module],
    imagenet: WeightsEnum,
    *,
    pretrained: bool,
    weights: Path | None,
    head_key: str,
    fix_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """The whole torchvision model, random or holding pretrained weights; the caller then cuts it.

    ``make(num_classes, state)`` builds the torchvision model (``state`` None for random init).
    The weights are loaded before any head is replaced, strictly; ``head_key`` (the final layer's
    weight) gives the number of outputs the file was saved with, so a fine-tuned model's file fits.
    """
    if not pretrained:
        if weights is not None:
            raise OptionsError(
                f"classifier {plugin!r}: --weights {weights} was given together with --no-pretrained; "
                f"drop one of them"
            )
        return make(1000, None)
    # A bad --weights file is the user's to fix; a bad download is reported as a plain CxrError.
    error: type[CxrError]
    if weights is not None:
        state = read_weights_file(weights, plugin, imagenet)
        source, error = f"--weights {weights}", OptionsError
        log.info("%s: loading backbone weights from %s", plugin, weights)
    else:
        state = download_imagenet(imagenet, plugin)
        source, error = str(cached_weights_path(imagenet)), CxrError
    if fix_keys is not None:
        state = fix_keys(state)
    head = state.get(head_key)
    num_classes = head.shape[0] if isinstance(head, torch.Tensor) and head.dim() == 2 else 1000
    model = make(num_classes, state)
    check_and_load(model, state, source=source, plugin=plugin, error=error)
    return model


_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def fix_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the 'norm.1'-style keys of torchvision's published DenseNet files to 'norm1'."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _OLD_DENSENET_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


class TorchvisionClassifier(Classifier[O]):
    """An ImageNet torchvision model, loaded once, cut and re-headed; subclasses say where and how.

    ``make`` builds the full torchvision model (``state`` is the state dict about to be loaded, or
    None), ``assemble`` turns it into the network ``build`` returns.
    """

    input_size: int = 224
    pretrained_by_default: ClassVar[bool] = True
    #: The torchvision weights used when pretrained.
    imagenet_weights: ClassVar[WeightsEnum]
    #: A key of the original classification layer, to tell the file's class count.
    head_key: ClassVar[str]

    @staticmethod
    def fix_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename keys of old weight files before loading (identity unless overridden)."""
        return state

    @abstractmethod
    def make(self, num_classes: int, state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        """The full torchvision model with ``num_classes`` outputs, untrained."""

    @abstractmethod
    def assemble(self, full: nn.Module, num_classes: int) -> nn.Module:
        """The returned network: the cut trunk of ``full`` and its new head."""

    def build(self, num_classes: int, *, pretrained: bool, weights: Path | None) -> nn.Module:
        check_num_classes(num_classes, self.name)
        full = torchvision_model(
            self.name,
            self.make,
            self.imagenet_weights,
            pretrained=pretrained,
            weights=weights,
            head_key=self.head_key,
            fix_keys=type(self).fix_keys,
        )
        return self.assemble(full, num_classes)
