"""The natural photos int8 calibration and evaluation run on, and their deterministic augmentations.

The photos are the sample data that PyPI packages ship inside their wheels under free licences
(scikit-image, scikit-learn, matplotlib; installed with the project, so nothing is downloaded).
Each photo belongs to exactly one side of a fixed split, so the agreement reported after a build
is measured on photos the calibration never saw: a quantizer that over-fits its ranges to the
calibration pictures cannot flatter itself. Photos that are the same scene twice (the right
view of scikit-image's stereo pair; the project's own sample JPEGs, which are re-encoded
scikit-image photos) are left out so that neither side holds a near-copy of the other's.

Every sample goes through the serving path exactly: the augmented picture is encoded as a JPEG
(what clients send) and handed to ``prepare_image`` with the model's own preprocessing config,
so calibration ranges are those of the tensors the server will feed.
"""

from __future__ import annotations

import importlib.util
import io
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageEnhance

from batchserve.model_repo.errors import ModelRepoError
from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image

Split = Literal["calibration", "evaluation"]
CALIBRATION: Split = "calibration"
EVALUATION: Split = "evaluation"

AUGMENTATIONS_PER_PHOTO = 16
"""Samples per photo: the photo as it is, then 15 seeded variants (see `augmentation_plan`)."""
SEED = 20261201
JPEG_QUALITY = 90


class CalibrationPhotosError(ModelRepoError, RuntimeError):
    """A photo's package is not installed, or its file is missing or unreadable."""


@dataclass(frozen=True, slots=True)
class Photo:
    name: str
    package: str
    """Import name of the package whose wheel ships the file."""
    path: str
    """Path inside that package."""
    split: Split
    licence: str


def _sk(name: str, file: str, split: Split, licence: str) -> Photo:
    return Photo(name, "skimage", f"data/{file}", split, f"scikit-image sample data: {licence}")


# The split alternates kinds of picture (people, animals, objects, textures, microscopy, sky) so
# each side sees the same mix; it is fixed here rather than drawn, so it can never drift.
PHOTOS: tuple[Photo, ...] = (
    _sk("astronaut", "astronaut.png", CALIBRATION, "NASA, public domain"),
    _sk("camera", "camera.png", EVALUATION, "CC0 (Lav Varshney)"),
    _sk("chelsea", "chelsea.png", EVALUATION, "CC0 (Stefan van der Walt)"),
    _sk("coffee", "coffee.png", CALIBRATION, "CC0 (Rachel Michetti)"),
    _sk("rocket", "rocket.jpg", EVALUATION, "SpaceX, public domain"),
    _sk("motorcycle", "motorcycle_left.png", CALIBRATION, "Middlebury 2014 stereo, shipped under BSD-3-Clause"),
    _sk("clock", "clock_motion.png", CALIBRATION, "public domain (Stefan van der Walt)"),
    _sk("coins", "coins.png", EVALUATION, "Brooklyn Museum, no known copyright restrictions"),
    _sk("brick", "brick.png", EVALUATION, "CC0 (cc0textures.com)"),
    _sk("grass", "grass.png", CALIBRATION, "CC0 (DeviantArt linolafett)"),
    _sk("gravel", "gravel.png", EVALUATION, "CC0 (cc0textures.com)"),
    _sk("moon", "moon.png", CALIBRATION, "shipped under BSD-3-Clause"),
    _sk("hubble_deep_field", "hubble_deep_field.jpg", EVALUATION, "NASA, public domain"),
    _sk("retina", "retina.jpg", CALIBRATION, "CC0 (Wikimedia Commons)"),
    _sk("microaneurysms", "microaneurysms.png", EVALUATION, "CC0 (Andreas Maier)"),
    _sk("cell", "cell.png", EVALUATION, "CC0"),
    _sk("immunohistochemistry", "ihc.png", CALIBRATION, "CMMI, no known copyright restrictions"),
    _sk("page", "page.png", CALIBRATION, "shipped under BSD-3-Clause"),
    _sk("text", "text.png", EVALUATION, "public domain (Wikimedia Commons)"),
    Photo(
        "china",
        "sklearn",
        "datasets/images/china.jpg",
        EVALUATION,
        "scikit-learn sample data: CC BY 2.0, danielbuechele (Flickr)",
    ),
    Photo(
        "flower",
        "sklearn",
        "datasets/images/flower.jpg",
        CALIBRATION,
        "scikit-learn sample data: CC BY 2.0, vultilion (Flickr)",
    ),
    Photo(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        CALIBRATION,
        "matplotlib sample data: U.S. Navy, public domain",
    ),
)
PACKAGES: dict[str, str] = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
"""Import name -> PyPI name, for the message when one is missing."""


def photos(split: Split | None = None) -> list[Photo]:
    return [p for p in PHOTOS if split is None or p.split == split]


def photo_path(photo: Photo) -> Path:
    """The file inside the installed package, found without importing it (scikit-learn and
    matplotlib take seconds to import and are not needed for reading a file)."""
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        pypi = PACKAGES.get(photo.package, photo.package)
        raise CalibrationPhotosError(
            f"calibration photo {photo.name!r} comes from the package {pypi}, which is not installed "
            f"(pip install {pypi}, or the extra batchserve[calibration]; `make install` installs it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / photo.path
    if not path.is_file():
        raise CalibrationPhotosError(f"calibration photo {photo.name!r}: {path} is missing from {photo.package}")
    return path


def load_photo(photo: Photo) -> Image.Image:
    """Pixels in the mode the serving path would resample (RGB, or L for grayscale photos)."""
    try:
        with Image.open(photo_path(photo)) as img:
            img.load()
            return img.convert("L" if img.mode in ("L", "I;16", "I") else "RGB")
    except OSError as exc:
        raise CalibrationPhotosError(f"cannot read calibration photo {photo.name!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Augmentation:
    """One variant of a photo: a crop (fractions of the photo), a mirror, a resolution and a colour
    change, the kinds of difference between two photos of the same thing."""

    index: int
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    """(left, top, right, bottom) as fractions of width and height."""
    flip: bool = False
    scale: float = 1.0
    """The cropped picture is resized by this factor (below 1: a smaller, softer photo)."""
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self == Augmentation(self.index)


def augmentation_plan(photo: Photo, count: int = AUGMENTATIONS_PER_PHOTO, seed: int = SEED) -> list[Augmentation]:
    """`count` augmentations of one photo: the first is the photo unchanged, the others are drawn
    from a generator seeded by (seed, the photo's name), so the plan of one photo does not change
    when photos are added or reordered."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    rng = np.random.default_rng([seed, zlib.crc32(photo.name.encode())])
    plan = [Augmentation(0)]
    for i in range(1, count):
        area = rng.uniform(0.35, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        w, h = min(1.0, float(np.sqrt(area * aspect))), min(1.0, float(np.sqrt(area / aspect)))
        left, top = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
        plan.append(
            Augmentation(
                index=i,
                crop=(left, top, left + w, top + h),
                flip=bool(rng.random() < 0.5),
                scale=float(rng.uniform(0.5, 1.0)),
                brightness=float(rng.uniform(0.75, 1.25)),
                contrast=float(rng.uniform(0.75, 1.25)),
                saturation=float(rng.uniform(0.7, 1.3)),
            )
        )
    return plan


def augment(image: Image.Image, aug: Augmentation) -> Image.Image:
    if aug.is_identity:
        return image
    w, h = image.size
    left, top, right, bottom = aug.crop
    out = image.crop((round(left * w), round(top * h), max(round(right * w), 1), max(round(bottom * h), 1)))
    if aug.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug.scale != 1.0:
        size = (max(1, round(out.width * aug.scale)), max(1, round(out.height * aug.scale)))
        out = out.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = ImageEnhance.Brightness(out).enhance(aug.brightness)
    out = ImageEnhance.Contrast(out).enhance(aug.contrast)
    if out.mode == "RGB":
        out = ImageEnhance.Color(out).enhance(aug.saturation)
    return out


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


@dataclass(frozen=True)
class SampleSet:
    """Preprocessed samples of some photos: row i of `tensors` is augmentation `augmentations[i]`
    of photo `photo_names[i]`."""

    tensors: np.ndarray
    """float32 [N, 3, crop, crop], exactly what the server feeds the model."""
    photo_names: tuple[str, ...]
    augmentations: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.photo_names)

    @property
    def photos(self) -> list[str]:
        return list(dict.fromkeys(self.photo_names))

    def subset(self, rows: Sequence[int] | np.ndarray) -> SampleSet:
        rows = np.asarray(rows, dtype=np.int64)
        return SampleSet(
            np.ascontiguousarray(self.tensors[rows]),
            tuple(self.photo_names[i] for i in rows),
            tuple(self.augmentations[i] for i in rows),
        )

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self), size):
            yield self.tensors[start : start + size]


def sample_set(
    chosen: Sequence[Photo], preprocess: PreprocessConfig, count: int = AUGMENTATIONS_PER_PHOTO, seed: int = SEED
) -> SampleSet:
    """Every augmentation of every chosen photo, encoded and preprocessed as the server would."""
    tensors: list[np.ndarray] = []
    names: list[str] = []
    indices: list[int] = []
    for photo in chosen:
        image = load_photo(photo)
        for aug in augmentation_plan(photo, count, seed):
            tensors.append(prepare_image(encode_jpeg(augment(image, aug)), preprocess).tensor)
            names.append(photo.name)
            indices.append(aug.index)
    if not tensors:
        raise CalibrationPhotosError("no photos chosen")
    return SampleSet(np.stack(tensors), tuple(names), tuple(indices))
