"""The Kaggle COVID-19 Radiography Database: one folder per class, images inside or in images/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from cxraug import hookimpl
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import COVID, LUNG_OPACITY, NORMAL, PNEUMONIA_VIRAL

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

#: Class folder names across releases (v1: COVID-19, NORMAL; later: COVID, Normal, Lung_Opacity).
CLASS_FOLDERS: dict[str, str] = {
    "covid-19": COVID,
    "covid": COVID,
    "normal": NORMAL,
    "viral pneumonia": PNEUMONIA_VIRAL,
    "lung_opacity": LUNG_OPACITY,
    "lung opacity": LUNG_OPACITY,
}
#: How many single-subfolder wrappers (archive/COVID-19_Radiography_Dataset/) to look through.
MAX_WRAPPERS = 2
NO_PATIENT_IDS = (
    "no patient ids in this source: splits are made by image, so one patient's images may land "
    "in different splits"
)


class RadiographyOptions(PluginOptions):
    """The layout is detected; there is nothing to choose."""


class RadiographyAdapter(DatasetAdapter[RadiographyOptions]):
    """COVID-19 Radiography Database (Kaggle): COVID-19, normal, viral pneumonia, lung opacity.

    Version 1 has ``COVID-19/``, ``NORMAL/`` and ``Viral Pneumonia/`` with the images inside;
    later versions have ``COVID/``, ``Normal/``, ``Lung_Opacity/`` and ``Viral Pneumonia/``, each
    with ``images/`` and ``masks/`` (masks are ignored). The root may also be a folder holding the
    unpacked dataset folder. There are no patient ids and no official split.

    Citation: Chowdhury, M. E. H., Rahman, T., Khandakar, A., et al. "Can AI help in screening
    Viral and COVID-19 pneumonia?" IEEE Access 8, 132665-132676 (2020).
    https://doi.org/10.1109/ACCESS.2020.3010287 ; and Rahman, T., Khandakar, A., Qiblawey, Y., et
    al. "Exploring the effect of image enhancement techniques on COVID-19 detection using chest
    X-ray images." Computers in Biology and Medicine 132, 104319 (2021).
    https://doi.org/10.1016/j.compbiomed.2021.104319

    Download: https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database
    """

    name: ClassVar[str] = "radiography"
    description: ClassVar[str] = "Kaggle COVID-19 Radiography Database, any version"
    #: Not found on the dataset's published pages: the model card says "unknown — check the source".
    license: ClassVar[str] = ""

    Options: ClassVar[type[RadiographyOptions]] = RadiographyOptions

    def __init__(self, options: RadiographyOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        self._notes = []
        if root is None:
            raise DataError("radiography needs --root: the unpacked COVID-19_Radiography_Dataset")
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset root does not exist; pass --root pointing at it")
        dataset = DatasetRoot(root)
        base = _find_base(root)
        classes = sorted(
            (d for d in base.iterdir() if d.is_dir() and d.name.lower() in CLASS_FOLDERS),
            key=lambda d: d.name,
        )
        linked_out: list[str] = []
        for folder in classes:
            label = CLASS_FOLDERS[folder.name.lower()]
            images = folder / "images"
            top = images if images.is_dir() else folder
            # A class folder linked from outside the root is not walked at all.
            if dataset.escapes(top):
                linked_out.append(dataset.original(top))
                continue
            for path in _images(top):
                yield Record(
                    image=path,
                    label=label,
                    source=self.name,
                    original=dataset.original(path),
                    patient_id=None,
                    view=None,
                    split=None,
                    refused=dataset.escapes(path),
                )
        self._notes.append(NO_PATIENT_IDS)
        if linked_out:
            self._notes.append(f"ignored folders that are links out of {root}: {', '.join(linked_out)}")
        ignored = sorted(
            d.name
            for d in base.iterdir()
            if d.is_dir() and d.name.lower() not in CLASS_FOLDERS and not _hidden(d.name)
        )
        if ignored:
            self._notes.append(f"ignored folders that are not classes: {', '.join(ignored)}")


def _find_base(root: Path) -> Path:
    """The folder holding the class folders: the root or a single folder wrapping it."""
    base = root
    for _ in range(MAX_WRAPPERS + 1):
        subdirs = [d for d in base.iterdir() if d.is_dir() and not _hidden(d.name)]
        if any(d.name.lower() in CLASS_FOLDERS for d in subdirs):
            return base
        if len(subdirs) != 1:
            break
        base = subdirs[0]
    raise DataError(
        f"{root}: no COVID-19 Radiography Database class folders (COVID, Normal, Viral Pneumonia, "
        "Lung_Opacity; or COVID-19, NORMAL in version 1); pass --root pointing at the unpacked "
        "dataset folder"
    )


def _images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` in a stable order, leaving out masks/ and hidden entries."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d.lower() != "masks" and not _hidden(d))
        for filename in sorted(filenames):
            if filename.lower().endswith(IMAGE_SUFFIXES) and not _hidden(filename):
                yield Path(dirpath) / filename


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


@hookimpl
def register_datasets(register: Register) -> None:
    register(RadiographyAdapter)
