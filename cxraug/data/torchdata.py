"""torch Datasets over a prepared dataset's memory-mapped images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """Rows ``idx`` of a (N, S, S) uint8 array as (1, S, S) float tensors in [0, 1] and labels."""

    def __init__(
        self, images: np.ndarray, idx: np.ndarray, targets: np.ndarray, transform: Any = None
    ) -> None:
        self.images = images
        self.idx = np.asarray(idx, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[self.idx[k]])).unsqueeze(0).float() / 255.0
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[k]
