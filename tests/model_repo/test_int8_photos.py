"""The calibration/evaluation photos: enough distinct ones, split by photo, augmented deterministically,
and preprocessed exactly as the server does."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from batchserve.model_repo import calibration_photos as cp
from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image


def test_at_least_twenty_distinct_photos_all_installed() -> None:
    assert len(cp.PHOTOS) >= 20
    assert len({p.name for p in cp.PHOTOS}) == len(cp.PHOTOS)
    digests = {hashlib.sha256(cp.photo_path(p).read_bytes()).hexdigest() for p in cp.PHOTOS}
    assert len(digests) == len(cp.PHOTOS)  # no file twice under two names
    sizes = {cp.load_photo(p).size for p in cp.PHOTOS}
    assert all(min(w, h) >= 100 for w, h in sizes)
    assert all(p.licence for p in cp.PHOTOS)


def test_split_is_by_photo_half_and_half_and_disjoint() -> None:
    calibration, evaluation = cp.photos(cp.CALIBRATION), cp.photos(cp.EVALUATION)
    assert abs(len(calibration) - len(evaluation)) <= 1
    assert {p.name for p in calibration}.isdisjoint({p.name for p in evaluation})
    assert {p.name for p in calibration} | {p.name for p in evaluation} == {p.name for p in cp.PHOTOS}
    paths = {cp.photo_path(p) for p in calibration}
    assert paths.isdisjoint({cp.photo_path(p) for p in evaluation})


def test_augmentation_plans_are_seeded_per_photo() -> None:
    chelsea, coffee = (next(p for p in cp.PHOTOS if p.name == n) for n in ("chelsea", "coffee"))
    plan = cp.augmentation_plan(chelsea)
    assert plan == cp.augmentation_plan(chelsea)  # same seed, same plan
    assert len(plan) == cp.AUGMENTATIONS_PER_PHOTO >= 10
    assert plan[0].is_identity and not any(a.is_identity for a in plan[1:])
    assert len({a.crop for a in plan}) == len(plan)  # every variant differs
    assert plan != cp.augmentation_plan(coffee)  # each photo draws its own
    assert plan != cp.augmentation_plan(chelsea, seed=cp.SEED + 1)
    # Renaming another photo (or adding one) does not move this one's plan: the seed is its own name.
    assert cp.augmentation_plan(replace(chelsea, split=cp.EVALUATION)) == plan
    for a in plan:
        left, top, right, bottom = a.crop
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1


def test_samples_are_deterministic_and_what_the_server_feeds() -> None:
    by_name = {p.name: p for p in cp.PHOTOS}
    chosen = [by_name["chelsea"], by_name["camera"]]  # one colour, one grayscale
    config = PreprocessConfig()
    first = cp.sample_set(chosen, config, count=3)
    again = cp.sample_set(chosen, config, count=3)
    assert first.tensors.shape == (6, 3, 224, 224) and first.tensors.dtype == np.float32
    assert np.array_equal(first.tensors, again.tensors)
    assert first.photo_names == ("chelsea",) * 3 + ("camera",) * 3 and first.augmentations == (0, 1, 2) * 2
    assert len({hashlib.sha256(t.tobytes()).hexdigest() for t in first.tensors}) == 6
    # The unaugmented sample is the served tensor of the photo sent as a JPEG.
    photo = chosen[0]
    served = prepare_image(cp.encode_jpeg(cp.load_photo(photo)), config).tensor
    assert np.array_equal(first.tensors[0], served)
    assert first.subset([3, 4]).photo_names == ("camera", "camera")


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = cp.Photo("ghost", "no_such_package_here", "data/ghost.png", cp.CALIBRATION, "none")
    with pytest.raises(cp.CalibrationPhotosError, match="no_such_package_here.*not installed"):
        cp.photo_path(ghost)
    missing = cp.Photo("gone", "skimage", "data/no_such_photo.png", cp.CALIBRATION, "none")
    with pytest.raises(cp.CalibrationPhotosError, match="no_such_photo.png is missing"):
        cp.photo_path(missing)
    with pytest.raises(ValueError, match="at least 1"):
        cp.augmentation_plan(ghost, count=0)
