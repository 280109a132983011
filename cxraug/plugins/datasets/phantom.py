"""Phantom: procedurally drawn chest-radiograph-like images, so every command runs offline."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field, field_validator

from cxraug import hookimpl
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import (
    COVID,
    LUNG_OPACITY,
    NORMAL,
    PNEUMONIA,
    PNEUMONIA_BACTERIAL,
    PNEUMONIA_VIRAL,
    VOCABULARY,
    check_label,
)

logger = logging.getLogger(__name__)

# Image coordinates run from -1 to 1; u grows towards the image right (the patient's left, as a
# PA film is viewed facing the patient) and v grows downwards.


@dataclass(frozen=True)
class _Lung:
    medial: float  # distance of the medial border from the midline at the base
    lateral: float  # distance of the lateral border (costophrenic angle) from the midline
    apex: float  # v of the apex
    base: float  # v of the costophrenic angle
    dome: float  # v of the top of the diaphragm dome
    dome_at: float  # where across the lung (0 medial, 1 lateral) the dome peaks


@dataclass(frozen=True)
class _Anatomy:
    """One patient's body: follow-up images of the same patient share it."""

    right: _Lung  # patient's right lung, image left
    left: _Lung  # patient's left lung, image right
    body_width: float
    neck: float
    heart_x: float
    heart_shift: float  # how far the heart's centre sits below its usual place on the left dome
    heart_rx: float
    heart_ry: float
    heart_angle: float
    clavicle: float
    rib_start: float
    rib_spacing: float
    density: float
    gastric_bubble: bool


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    def between(low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    base = between(0.50, 0.60)
    dome = base - between(0.20, 0.28)
    right = _Lung(
        medial=between(0.09, 0.12),
        lateral=between(0.76, 0.84),
        apex=between(-0.82, -0.74),
        base=base,
        dome=dome,
        dome_at=between(0.45, 0.6),
    )
    # The left hemidiaphragm sits lower than the right, under the heart.
    left = _Lung(
        medial=between(0.10, 0.13),
        lateral=right.lateral - between(0.0, 0.05),
        apex=right.apex + between(-0.02, 0.04),
        base=base + between(0.02, 0.06),
        dome=dome + between(0.04, 0.09),
        dome_at=between(0.5, 0.65),
    )
    return _Anatomy(
        right=right,
        left=left,
        body_width=between(0.95, 1.05),
        neck=between(0.22, 0.30),
        heart_x=between(0.08, 0.14),
        heart_shift=between(-0.02, 0.04),
        heart_rx=between(0.34, 0.41),
        heart_ry=between(0.24, 0.29),
        heart_angle=between(0.3, 0.5),
        clavicle=between(-0.66, -0.58),
        rib_start=between(-0.86, -0.80),
        rib_spacing=between(0.125, 0.145),
        density=between(0.9, 1.1),
        gastric_bubble=bool(rng.random() < 0.7),
    )


def _soft(distance: np.ndarray, edge: float) -> np.ndarray:
    """A smooth step from 0 (distance << 0) to 1 (distance >> 0) over about ``edge``."""
    step = np.multiply(distance, 1.0 / edge)
    np.tanh(step, out=step)
    step *= 0.5
    step += 0.5
    return step


def _bands(phase: np.ndarray) -> np.ndarray:
    """Narrow bright bands at whole-number phases (a raised cosine to the fourth power)."""
    wave = 0.5 + 0.5 * np.cos((2.0 * math.pi) * phase)
    wave *= wave
    return wave * wave


@lru_cache(maxsize=64)
def _smoother(size: int, cells: int) -> np.ndarray:
    """Gaussian weights that spread ``cells`` random values smoothly over ``size`` pixels."""
    x = np.linspace(0.0, 1.0, size)
    c = np.linspace(0.0, 1.0, cells)
    weights = np.exp(-0.5 * ((x[:, None] - c[None, :]) * (cells - 1) / 0.8) ** 2)
    # Scaled so that white noise spread by these rows has unit variance at every pixel.
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field, zero mean and unit variance at every pixel."""
    m = _smoother(size, cells)
    return m @ rng.standard_normal((cells, cells), dtype=np.float32) @ m.T


@lru_cache(maxsize=16)
def _axis(size: int) -> np.ndarray:
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    axis.flags.writeable = False
    return axis


@dataclass
class _LungFrame:
    """A lung's mask and coordinates: ``across`` 0 medial to 1 lateral, ``down`` 0 apex to 1
    costophrenic angle, and polar coordinates around its hilum (``theta`` 0 pointing outwards)."""

    mask: np.ndarray
    across: np.ndarray
    down: np.ndarray
    radius: np.ndarray
    theta: np.ndarray
    side: float  # -1 for the image-left lung, +1 for the image-right lung
    lung: _Lung


HILUM_U, HILUM_V = 0.2, -0.02


def _lung_frame(u: np.ndarray, v: np.ndarray, lung: _Lung, side: float, edge: float) -> _LungFrame:
    out = u * side
    down = np.clip((v - lung.apex) * (1.0 / (lung.base - lung.apex)), 0.0, 1.0)
    span = lung.lateral - lung.medial
    # The medial border curves outwards and the lateral one inwards towards the apex.
    rise = 1.0 - down
    medial = lung.medial + 0.22 * span * rise * rise
    lateral = lung.medial + span * (0.3 + 0.7 * np.sqrt(down))
    across = (out - medial) / (lateral - medial)
    bend = (across - lung.dome_at) * (1.0 / (1.0 - lung.dome_at))
    diaphragm = lung.dome + (lung.base - lung.dome) * np.minimum(bend * bend, 1.6)
    mask = _soft(v - lung.apex, edge)
    mask *= _soft(diaphragm - v, edge)
    mask *= _soft(out - medial, edge)
    mask *= _soft(lateral - out, edge)
    hu, hv = out - HILUM_U, v - HILUM_V
    return _LungFrame(
        mask=mask,
        across=across,
        down=down,
        radius=np.sqrt(hu * hu + hv * hv),
        theta=np.arctan2(hv, hu),
        side=side,
        lung=lung,
    )


def _lung_point(frame: _LungFrame, across: float, down: float) -> tuple[float, float]:
    """Image coordinates (u, v) of a point given in a lung's own coordinates."""
    lung = frame.lung
    v = lung.apex + down * (lung.base - lung.apex)
    span = lung.lateral - lung.medial
    medial = lung.medial + 0.22 * span * (1.0 - down) ** 2
    lateral = lung.medial + span * (0.3 + 0.7 * math.sqrt(down))
    return frame.side * (medial + across * (lateral - medial)), v


def _blob(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, edge: float
) -> np.ndarray:
    du, dv = (u - cu) * (1.0 / ru), (v - cv) * (1.0 / rv)
    return _soft(1.0 - np.sqrt(du * du + dv * dv), edge)


def render_phantom(
    label: str,
    size: int,
    rng: np.random.Generator,
    *,
    anatomy: np.random.Generator | None = None,
) -> np.ndarray:
    """A (size, size) uint8 chest-radiograph-like phantom showing the pattern of ``label``.

    ``anatomy`` draws the patient's body (defaults to ``rng``); pass a generator seeded the same
    way to draw a follow-up image of the same patient.
    """
    check_label(label, "phantom label")
    if size < 8:
        raise ValueError(f"phantom size must be at least 8 pixels, got {size}")
    body = _sample_anatomy(anatomy if anatomy is not None else rng)
    pixel = 2.0 / size
    edge = max(0.02, 1.2 * pixel)

    # Pose: a small rotation, zoom and shift of the patient relative to the film.
    angle = rng.uniform(-0.05, 0.05)
    scale = rng.uniform(0.93, 1.04)
    x = _axis(size)[None, :] - rng.uniform(-0.04, 0.04)
    y = _axis(size)[:, None] - rng.uniform(-0.04, 0.04)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    u = cos * x + sin * y
    v = cos * y - sin * x
    au = np.abs(u)

    # Soft tissue of the trunk, narrowing over the shoulders to the neck.
    half_width = body.neck + (body.body_width - body.neck) * _soft(v + 0.86, 0.08)
    trunk = _soft(half_width - au, edge)
    ratio = au / half_width
    thickness = np.sqrt(np.maximum(1.0 - ratio * ratio, 0.0))
    image = 0.05 + trunk * (0.36 + 0.3 * thickness)

    right = _lung_frame(u, v, body.right, -1.0, edge)
    left = _lung_frame(u, v, body.left, 1.0, edge)

    # Heart, tilted with its apex towards the image right and down, resting on the left dome.
    hc, hs = math.cos(body.heart_angle), math.sin(body.heart_angle)
    heart_y = body.left.dome - 0.55 * body.heart_ry + body.heart_shift
    hu, hv = u - body.heart_x, v - heart_y
    eu = (hc * hu + hs * hv) * (1.0 / body.heart_rx)
    ev = (hc * hv - hs * hu) * (1.0 / body.heart_ry)
    heart = _soft(1.0 - np.sqrt(eu * eu + ev * ev), 0.05)
    aorta = _blob(u, v, body.heart_x + 0.04, -0.3, 0.1, 0.09, 0.3)
    mediastinum = _soft(0.12 + 0.05 * _soft(v + 0.1, 0.2) - au, 2 * edge)
    central = np.maximum(np.maximum(heart, aorta), mediastinum)
    shield = 1.0 - 0.9 * central

    # Lungs: air makes them dark, least so at the apices, bases and where the heart lies in front.
    lungs = np.zeros_like(image)
    for frame in (right, left):
        depth = 0.75 + 0.25 * np.sin(math.pi * np.clip(frame.across, 0.0, 1.0))
        depth *= 0.7 + 0.3 * _soft(frame.down - 0.15, 0.08)
        depth *= 0.9 + 0.1 * _soft(0.8 - frame.down, 0.1)
        lungs += frame.mask * depth
    lung_mask = right.mask + left.mask
    image -= (0.46 * body.density) * lungs * shield

    # Below the domes the liver, spleen and heart blend into one soft-tissue density.
    abdomen = _soft(v - body.right.dome - 0.06, 0.06)
    image += 0.05 * np.maximum(central, abdomen) * trunk
    # Spine with its vertebral bodies, and the air column of the trachea.
    vertebrae = np.cos((math.pi / 0.13) * (v + 1.0))
    image += (0.025 + 0.025 * vertebrae * vertebrae) * _soft(0.065 - au, edge) * trunk
    image -= 0.12 * _soft(0.035 - au, 0.5 * edge) * _soft(-0.3 - v, 0.05)

    # Hila and the vessels branching out of them, fading towards the periphery.
    vessel_phase = 2.0 * _smooth_field(rng, size, 6)
    for frame in (right, left):
        r = frame.radius
        fan = 0.5 + 0.5 * np.cos(9.0 * frame.theta + vessel_phase)
        fan = fan * fan * fan * np.exp(-4.0 * r) * (1.0 - np.exp(-70.0 * r * r))
        image += frame.mask * (0.08 * np.exp(-100.0 * r * r) + 0.07 * fan)

    # Posterior ribs slope down and out from the spine; the fainter anterior ones cross them.
    out = np.maximum(au - 0.06, 0.0)
    thorax = trunk * _soft(body.left.base + 0.05 - v, 0.06)
    posterior = v - body.rib_start + 0.2 * out - 0.55 * out * out
    phase = posterior / (body.rib_spacing * (1.0 + 0.3 * np.maximum(posterior, 0.0)))
    ribs = _bands(phase) * _soft(phase + 0.3, 0.1)
    reach = 0.85 - np.minimum(out, 0.85)
    anterior = v - body.rib_start - 0.15 - 0.55 * reach * reach
    ribs_a = _bands(anterior * (1.0 / (1.25 * body.rib_spacing))) * _soft(out - 0.3, 0.08)
    image += thorax * ((0.03 + 0.06 * lung_mask) * ribs + 0.03 * lung_mask * ribs_a)

    # Clavicles: shallow S-shaped bands from the sternal notch to the shoulders.
    along = au - 0.08
    clavicle_v = body.clavicle + 0.06 - 0.2 * along - 0.04 * np.sin((2.0 * math.pi / 0.8) * along)
    offset = (v - clavicle_v) * (1.0 / max(0.035, 1.2 * pixel))
    clavicles = np.exp(-offset * offset) * _soft(along, 0.03) * _soft(0.8 - along, 0.05)
    image += 0.16 * clavicles

    # The stomach's air bubble under the left dome.
    if body.gastric_bubble:
        image -= 0.12 * _blob(u, v, 0.4, body.left.dome + 0.13, 0.1, 0.06, 0.2)

    pathology = _pathology(label, u, v, (right, left), size, edge, rng)
    if pathology is not None:
        image += shield * pathology

    # Exposure and processing: brightness, contrast, gamma, uneven exposure and film grain.
    image *= rng.uniform(0.9, 1.1)
    image += rng.uniform(-0.04, 0.04) + 0.03 * _smooth_field(rng, size, 3)
    np.clip(image, 0.0, 1.0, out=image)
    image **= rng.uniform(0.85, 1.15)
    # Uniform grain with the spread of Gaussian grain of sigma 0.01-0.025: cheaper to draw.
    grain = rng.random((size, size), dtype=np.float32)
    image += (grain - 0.5) * (math.sqrt(12.0) * rng.uniform(0.01, 0.025))
    image *= 255.0
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    return image.astype(np.uint8)


def _pathology(
    label: str,
    u: np.ndarray,
    v: np.ndarray,
    lungs: tuple[_LungFrame, _LungFrame],
    size: int,
    edge: float,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """Extra density inside the lungs for ``label``; None for clear lungs."""
    if label == NORMAL:
        return None
    total = np.zeros_like(u)
    if label == COVID:
        # Bilateral, peripheral, lower-zone, patchy ground glass.
        for frame in lungs:
            patches = _soft(_smooth_field(rng, size, 9) + rng.uniform(0.0, 0.6), 0.5)
            zone = _soft(frame.across - rng.uniform(0.35, 0.55), 0.12)
            zone *= _soft(frame.down - rng.uniform(0.35, 0.55), 0.12)
            total += rng.uniform(0.22, 0.3) * frame.mask * zone * patches
    elif label in (PNEUMONIA, PNEUMONIA_BACTERIAL):
        # Dense lobar consolidation in one zone of one lung, bounded sharply by a fissure.
        frame = lungs[int(rng.integers(2))]
        lobe = int(rng.integers(3))
        if lobe == 0:
            region = _soft(rng.uniform(0.38, 0.48) - frame.down, 0.03)
        elif lobe == 1:
            region = _soft(frame.down - rng.uniform(0.3, 0.4), 0.03)
            region *= _soft(rng.uniform(0.65, 0.75) - frame.down, 0.1)
        else:
            region = _soft(frame.down - rng.uniform(0.5, 0.6), 0.04)
        region *= frame.mask
        texture = 0.85 + 0.15 * _smooth_field(rng, size, 7)
        total += rng.uniform(0.32, 0.4) * region * texture
        # Air bronchograms: darker branches running out from the hilum through the consolidation.
        bronchi = np.zeros_like(u)
        for _ in range(3):
            angle = rng.uniform(-1.0, 1.0)
            across = (frame.theta - angle) * frame.radius * (1.0 / max(0.025, edge))
            bronchi += np.exp(-across * across)
        total -= 0.05 * bronchi * _soft(frame.radius - 0.1, 0.05) * region
    elif label == PNEUMONIA_VIRAL:
        # Diffuse bilateral perihilar interstitial streaks and a fine reticular net.
        reticular = _soft(0.4 - np.abs(_smooth_field(rng, size, max(8, size // 5))), 0.2)
        for frame in lungs:
            r = frame.radius
            wobble = 1.2 * _smooth_field(rng, size, 7)
            streaks = 0.5 + 0.5 * np.cos(rng.uniform(8.0, 11.0) * frame.theta + wobble)
            patchy = _soft(_smooth_field(rng, size, 5) + 0.8, 0.6)
            perihilar = np.exp(r * (-1.0 / rng.uniform(0.4, 0.5)))
            perihilar *= 1.0 - 0.6 * np.exp(-70.0 * r * r)
            total += frame.mask * perihilar * patchy * (0.16 * streaks * streaks + 0.12 * reticular + 0.07)
    elif label == LUNG_OPACITY:
        # A few focal round opacities anywhere in the lungs.
        for _ in range(int(rng.integers(1, 4))):
            frame = lungs[int(rng.integers(2))]
            cu, cv = _lung_point(frame, rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8))
            radius = rng.uniform(0.06, 0.12)
            blob = _blob(u, v, cu, cv, radius, radius * rng.uniform(0.8, 1.2), 0.45)
            total += rng.uniform(0.24, 0.34) * blob * frame.mask
    else:
        raise AssertionError(f"no phantom pattern for label {label!r}")
    return total


class PhantomOptions(PluginOptions):
    """Options of the ``phantom`` dataset adapter."""

    classes: tuple[str, ...] = Field(
        default=(COVID, NORMAL, PNEUMONIA),
        description=f"labels to draw, from: {', '.join(VOCABULARY)}",
    )
    # bounded: every image is drawn in memory, and more than this is a typo, not a demo
    n_per_class: int = Field(default=200, ge=1, le=100_000, description="images drawn per class")
    size: int = Field(default=64, ge=16, le=1024, description="image side in pixels")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="random seed; same seed, same images")
    followup_fraction: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="fraction of patients with a second (follow-up) image, so patient ids repeat",
    )

    @field_validator("classes")
    @classmethod
    def _known_labels(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if not classes:
            raise ValueError(f"give at least one class, from: {', '.join(VOCABULARY)}")
        for label in classes:
            if label not in VOCABULARY:
                raise ValueError(f"unknown label {label!r}; valid labels are {', '.join(VOCABULARY)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes repeat a label: {', '.join(classes)}")
        return classes


class PhantomAdapter(DatasetAdapter[PhantomOptions]):
    """Synthetic chest-radiograph phantoms drawn on the fly: an offline demo, not real data.

    Each image is a procedural drawing (body, lungs, heart, mediastinum, ribs, clavicles, domes,
    film grain) with a class pattern: covid = bilateral peripheral lower-zone ground glass,
    pneumonia / pneumonia_bacterial = lobar consolidation in one zone, pneumonia_viral = bilateral
    perihilar streaks, lung_opacity = a few focal opacities, normal = clear lungs.
    """

    name: ClassVar[str] = "phantom"
    description: ClassVar[str] = "synthetic chest X-ray phantoms drawn offline (demos and tests)"
    #: Source: cxraug pyproject.toml.
    license: ClassVar[str] = "Apache-2.0 (drawn by cxraug; no patient data)"
    needs_root: ClassVar[bool] = False
    synthetic: ClassVar[bool] = True
    demo: ClassVar[bool] = True

    Options: ClassVar[type[PhantomOptions]] = PhantomOptions

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        if root is not None:
            logger.warning("phantom draws its images and ignores --root %s", root)
        for label in options.classes:
            yield from self._class_records(label, options)

    def _class_records(self, label: str, options: PhantomOptions) -> Iterator[Record]:
        # Seeding by (seed, label, patient) keeps a class's images the same whatever other
        # classes are asked for.
        key = VOCABULARY.index(label)
        n_patients, n_followups = _patient_counts(options.n_per_class, options.followup_fraction)
        picker = np.random.default_rng([options.seed, key])
        followups = set(picker.choice(n_patients, size=n_followups, replace=False).tolist())
        index = 0
        for patient in range(n_patients):
            for visit in range(2 if patient in followups else 1):
                image = render_phantom(
                    label,
                    options.size,
                    np.random.default_rng([options.seed, key, patient, visit, 1]),
                    anatomy=np.random.default_rng([options.seed, key, patient, 0]),
                )
                yield Record(
                    image=image,
                    label=label,
                    source=self.name,
                    original=f"phantom:{label}:{index}",
                    patient_id=f"phantom-{label}-{patient}",
                    view="PA",
                    split=None,
                )
                index += 1

    def notes(self) -> list[str]:
        options = self.options
        n_patients, n_followups = _patient_counts(options.n_per_class, options.followup_fraction)
        return [
            "SYNTHETIC PHANTOMS, NOT REAL X-RAYS: these images are drawn by a program, for demos "
            "and tests only; never use them to judge a model meant for patients",
            f"{options.n_per_class} images per class ({', '.join(options.classes)}) at "
            f"{options.size} px, seed {options.seed}: {n_patients} patients per class, "
            f"{n_followups} of them with a follow-up image",
        ]


def _patient_counts(n_images: int, followup_fraction: float) -> tuple[int, int]:
    """How many patients give ``n_images`` when ``followup_fraction`` of them have two images."""
    n_patients = math.ceil(n_images / (1.0 + followup_fraction))
    return n_patients, n_images - n_patients


@hookimpl
def register_datasets(register: Register) -> None:
    register(PhantomAdapter)
