"""The built-in augmenters: classic transforms (offline and online) and GAN-generated images."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.interfaces import Augmenter, AugmentRequest, AugmentServices
from cxraug.plugins import build_registry, get_plugin_manager
from cxraug.plugins.augmenters import classic, synthetic
from cxraug.plugins.augmenters.classic import ClassicAugmenter, ClassicOptions, build_transform
from cxraug.plugins.augmenters.synthetic import SyntheticAugmenter, SyntheticOptions
from cxraug.workspace import Workspace

S = 32


def _request(counts: dict[str, int], seed: int = 0, n_per_label: int = 3, **kw) -> AugmentRequest:
    rng = np.random.default_rng(123)
    labels = ["covid"] * n_per_label + ["normal"] * n_per_label
    images = rng.integers(0, 256, (len(labels), S, S), dtype=np.uint8)
    images.setflags(write=False)  # requests may hold read-only memory maps
    return AugmentRequest(images=images, labels=labels, counts=counts, seed=seed, size=S, **kw)


def _classic(**options) -> ClassicAugmenter:
    return ClassicAugmenter(ClassicOptions(**options))


def test_both_register_through_the_hook():
    found: list[type[Augmenter]] = []
    classic.register_augmenters(register=found.append)
    synthetic.register_augmenters(register=found.append)
    assert [(c.name, c.origin) for c in found] == [("classic", "classic"), ("synthetic", "synthetic")]


# ------------------------------------------------------------------------------------------ classic


def test_classic_counts_origin_and_sources():
    request = _request({"covid": 7, "normal": 2})
    out = list(_classic().augment(request))
    assert Counter(o.label for o in out) == {"covid": 7, "normal": 2}
    assert all(o.origin == "classic" and o.image.shape == (S, S) and o.image.dtype == np.uint8 for o in out)
    for o in out:
        source = int(o.provenance["source_index"])
        assert request.labels[source] == o.label and o.provenance["seed"] == "0"
        assert not np.array_equal(o.image, request.images[source]), "a transformed image must change"
    covid_sources = [o.provenance["source_index"] for o in out if o.label == "covid"]
    assert len(set(covid_sources[:3])) == 3, "every original is used before any repeats"
    assert covid_sources[3:6] == covid_sources[:3]


def test_classic_pure_flip_mirrors_exactly():
    request = _request({"covid": 3, "normal": 3})
    aug = _classic(rotation=0, translate=0, scale=(1, 1), hflip=1.0)
    for o in aug.augment(request):
        assert np.array_equal(o.image, request.images[int(o.provenance["source_index"])][:, ::-1])


def test_classic_translation_range():
    dot = np.zeros((1, S, S), np.uint8)
    dot[0, 16, 16] = 255
    aug = _classic(rotation=0, translate=0.1, scale=(1, 1), hflip=0)
    request = AugmentRequest(images=dot, labels=["covid"], counts={"covid": 60}, seed=1, size=S)
    shifts = []
    for o in aug.augment(request):
        y, x = np.unravel_index(np.argmax(o.image), o.image.shape)
        assert o.image.max() == 255, "integer shifts keep the dot sharp"
        shifts.append((int(y) - 16, int(x) - 16))
    limit = 0.1 * S
    assert all(abs(dy) <= limit and abs(dx) <= limit for dy, dx in shifts)
    assert len(set(shifts)) > 10, "shifts are random over the range"


def _orientation(image: np.ndarray) -> float:
    """Principal-axis angle in degrees from second-order image moments."""
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    w = image.astype(np.float64)
    m = w.sum()
    cy, cx = (w * ys).sum() / m, (w * xs).sum() / m
    mu20 = (w * (xs - cx) ** 2).sum() / m
    mu02 = (w * (ys - cy) ** 2).sum() / m
    mu11 = (w * (xs - cx) * (ys - cy)).sum() / m
    return math.degrees(0.5 * math.atan2(2 * mu11, mu20 - mu02))


def test_classic_rotation_range():
    bar = np.zeros((1, S, S), np.uint8)
    bar[0, 15:17, 6:26] = 255
    assert abs(_orientation(bar[0])) < 1e-6
    aug = _classic(rotation=15, translate=0, scale=(1, 1), hflip=0)
    request = AugmentRequest(images=bar, labels=["covid"], counts={"covid": 40}, seed=2, size=S)
    angles = [_orientation(o.image) for o in aug.augment(request)]
    assert all(abs(a) <= 15 + 1.5 for a in angles), max(angles, key=abs)
    assert max(angles) > 7 and min(angles) < -7, "rotations span both directions"


def test_classic_deterministic_and_independent_of_batching():
    aug = _classic()
    first = [o.image for o in aug.augment(_request({"covid": 5, "normal": 2}, seed=4))]
    again = [o.image for o in _classic().augment(_request({"covid": 5, "normal": 2}, seed=4))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # a shorter request, or one without the other label, gives the same leading images
    fewer = [o.image for o in aug.augment(_request({"normal": 1, "covid": 3}, seed=4))]
    assert np.array_equal(fewer[0], first[5])
    assert all(np.array_equal(a, b) for a, b in zip(fewer[1:], first[:3], strict=True))
    other = [o.image for o in aug.augment(_request({"covid": 5, "normal": 2}, seed=5))]
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_classic_leaves_global_rng_alone_and_rejects_missing_label():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(_classic().augment(_request({"covid": 2})))
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(DataError, match="no 'flu' images"):
        list(_classic().augment(_request({"flu": 1})))


def test_classic_options_validated():
    with pytest.raises(ValidationError, match="scale"):
        ClassicOptions(scale=(1.2, 0.8))
    with pytest.raises(ValidationError):
        ClassicOptions(hflip=1.5)
    with pytest.raises(ValidationError):
        ClassicOptions(shear=3)
    assert (
        len(build_transform(ClassicOptions(rotation=0, translate=0, scale=(1, 1), hflip=0)).transforms) == 1
    )


def test_classic_online_transforms_each_image_independently():
    online = _classic().online_transform()
    torch.manual_seed(0)
    x = torch.rand(1, 1, S, S).repeat(4, 1, 1, 1)
    y = online(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert all(not torch.equal(y[i], y[j]) for i in range(4) for j in range(i + 1, 4))
    assert torch.equal(x[0], x[1]), "the input batch is not modified"
    flip = _classic(rotation=0, translate=0, scale=(1, 1), hflip=1.0).online_transform()
    assert torch.equal(flip(x), x.flip(-1))
    with pytest.raises(ValueError, match="B, 1, S, S"):
        online(torch.zeros(2, S, S))


# ---------------------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def gan_workspace(tmp_path_factory) -> Workspace:
    """A workspace with one tiny conditional GAN run (16 px) on a phantom dataset."""
    from cxraug.cli import build_app

    ws = Workspace(tmp_path_factory.mktemp("augment") / "ws")
    env = {"COLUMNS": "200", "CXRAUG_WORKSPACE": str(ws.root)}
    prepare = ["data", "prepare", "phantom", "--size", "32", "--name", "tiny"]
    prepare += ["--opt", "n_per_class=16", "--opt", "classes=covid,normal"]
    train = ["train-gan", "acgan", "--data", "tiny", "--size", "16", "--batch-size", "8", "--kimg", "0.016"]
    train += ["--opt", "latent_dim=16", "--opt", "ngf=8", "--opt", "ndf=8"]
    for args in (prepare, train):
        result = CliRunner().invoke(build_app(None), args, env=env)
        assert result.exit_code == 0, result.output
    return ws


def _services(ws: Workspace | None, gan_run: Path | None = None) -> AugmentServices:
    return AugmentServices(
        workspace=ws, registry=build_registry(get_plugin_manager()), device="cpu", gan_run=gan_run
    )


def _synthetic_request(ws: Workspace, counts: dict[str, int], seed: int = 0) -> AugmentRequest:
    return _request(counts, seed=seed, services=_services(ws))


def test_synthetic_counts_provenance_and_determinism(gan_workspace):
    run = sorted((gan_workspace.runs_dir / "gan").iterdir())[-1]
    aug = SyntheticAugmenter()
    out = list(aug.augment(_synthetic_request(gan_workspace, {"covid": 5, "normal": 3, "pneumonia": 0})))
    assert Counter(o.label for o in out) == {"covid": 5, "normal": 3}
    assert aug.rejected == {"covid": 0, "normal": 0}
    for o in out:
        assert o.origin == "synthetic" and o.image.shape == (S, S) and o.image.dtype == np.uint8
        p = o.provenance
        assert Path(p["gan_run"]) == run and Path(p["checkpoint"]).is_file()
        assert len(p["checkpoint_sha256"]) == 64 and p["seed"] == "0" and p["truncation"] == "1.0"
        assert "confidence" not in p
    assert [o.provenance["index"] for o in out if o.label == "covid"] == ["0", "1", "2", "3", "4"]
    # the run by name and a batch size of 2 give the same images: latents are per image
    by_name = SyntheticAugmenter(SyntheticOptions(run=run.name, batch_size=2))
    again = list(by_name.augment(_synthetic_request(gan_workspace, {"covid": 5, "normal": 3})))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, again, strict=True))
    other = list(aug.augment(_synthetic_request(gan_workspace, {"covid": 5}, seed=1)))
    assert not np.array_equal(other[0].image, out[0].image)


def test_synthetic_takes_the_run_the_core_hands_over(gan_workspace):
    run = sorted((gan_workspace.runs_dir / "gan").iterdir())[-1]
    assert SyntheticAugmenter.uses_gan_run and not ClassicAugmenter.uses_gan_run
    handed = _request({"covid": 2}, services=_services(None, gan_run=run))
    out = list(SyntheticAugmenter().augment(handed))
    assert [Path(o.provenance["gan_run"]) for o in out] == [run, run]
    with pytest.raises(OptionsError, match="no workspace to look up the gan run"):
        list(SyntheticAugmenter().augment(_request({"covid": 1}, services=_services(None))))
    # an explicit run in the options wins over the one handed over
    explicit = _request({"covid": 1}, services=_services(gan_workspace, gan_run=run / "no-such-run"))
    assert len(list(SyntheticAugmenter(SyntheticOptions(run=run.name)).augment(explicit))) == 1


def test_synthetic_passes_the_contract_with_a_handed_run(gan_workspace):
    from cxraug.testing import check_augmenter_plugin

    run = sorted((gan_workspace.runs_dir / "gan").iterdir())[-1]
    made = check_augmenter_plugin(
        SyntheticAugmenter, services=_services(None, gan_run=run), counts={"covid": 2, "normal": 1}
    )
    assert len(made) == 3
    assert SyntheticAugmenter().online_transform() is None, "no per-batch form"


def test_synthetic_unknown_label_and_run(gan_workspace):
    with pytest.raises(OptionsError, match="does not generate 'flu'; it generates covid, normal"):
        list(SyntheticAugmenter().augment(_synthetic_request(gan_workspace, {"covid": 1, "flu": 2})))
    with pytest.raises(DataError, match="not found"):
        list(SyntheticAugmenter(SyntheticOptions(run="nope")).augment(_synthetic_request(gan_workspace, {})))


def _even_scorer(calls: list[int]):
    """A stand-in classifier: confident exactly on the even-numbered candidates of each label."""
    seen: Counter[str] = Counter()

    def make(filter_run, services, labels):
        assert filter_run == "ref" and services.device == "cpu"

        def score(images, label):
            calls.append(len(images))
            start = seen[label]
            seen[label] += len(images)
            return np.array([0.9 if (start + k) % 2 == 0 else 0.1 for k in range(len(images))])

        return score

    return make


def test_synthetic_filter_keeps_confident_images(gan_workspace, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(synthetic, "_scorer", _even_scorer(calls))
    aug = SyntheticAugmenter(SyntheticOptions(filter_run="ref", min_confidence=0.8, batch_size=4))
    out = list(aug.augment(_synthetic_request(gan_workspace, {"covid": 5, "normal": 2})))
    assert Counter(o.label for o in out) == {"covid": 5, "normal": 2}
    assert [o.provenance["index"] for o in out if o.label == "covid"] == ["0", "2", "4", "6", "8"]
    assert all(o.provenance["confidence"] == "0.900000" for o in out)
    assert aug.rejected == {"covid": 4, "normal": 1}
    assert max(calls) <= 4
    plain = list(SyntheticAugmenter().augment(_synthetic_request(gan_workspace, {"covid": 9})))
    assert np.array_equal(out[2].image, plain[4].image), "a kept image is the unfiltered image of its index"


def test_synthetic_impossible_filter_says_the_pass_rate(gan_workspace, monkeypatch):
    monkeypatch.setattr(synthetic, "_scorer", _even_scorer([]))
    aug = SyntheticAugmenter(SyntheticOptions(filter_run="ref", min_confidence=0.95, max_tries=2))
    with pytest.raises(CxrError, match=r"only 0 of 8 generated 'covid' images \(0\.0%\).*min_confidence"):
        list(aug.augment(_synthetic_request(gan_workspace, {"covid": 4})))
    assert aug.rejected == {"covid": 8}


def test_synthetic_scorer_uses_the_classifier_api(gan_workspace, monkeypatch):
    """The real _scorer glue, with the classifier loading replaced by a stand-in."""
    probs = np.array([[0.3, 0.7], [0.8, 0.2]])
    loaded = type(
        "Loaded",
        (),
        {"labels": ["normal", "covid"], "input_size": 16, "predict_proba": lambda self, im: probs},
    )()
    monkeypatch.setattr(synthetic, "load_classifier", lambda run, registry, device: loaded)
    run = gan_workspace.runs_dir / "classifier" / "ref"
    run.mkdir(parents=True, exist_ok=True)
    (run / "options.json").write_text("{}")
    services = _services(gan_workspace)
    score = synthetic._scorer("ref", services, ["covid"])
    assert score(np.zeros((2, S, S), np.uint8), "covid").tolist() == [0.7, 0.2]
    with pytest.raises(OptionsError, match="does not predict 'flu'; it predicts normal, covid"):
        synthetic._scorer("ref", services, ["covid", "flu"])
