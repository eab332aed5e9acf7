"""The built-in collection: real photos that install offline, each with its licence.

scikit-image's and scikit-learn's sample photos (both packages ship them inside the wheel;
nothing is downloaded) plus convscope's bundled samples. Small on purpose: it makes dataset
examples work on a fresh machine; real use indexes the user's own folder. A package that is
not installed contributes nothing (``pip install 'convscope[samples]'`` adds both).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from convscope.services.storage.images import SAMPLES

NAME = "built-in photos"


@dataclass(frozen=True)
class BuiltinPhoto:
    package: str  # "convscope", "skimage" or "sklearn"
    relative: str  # path inside the package
    licence: str
    credit: str


# Licences as stated in scikit-image's ``skimage/data/_fetchers.py`` docstrings and
# scikit-learn's ``datasets/images/README.txt``. The four scikit-image photos bundled as
# convscope samples are not listed twice; images without a stated licence are left out.
PHOTOS: tuple[BuiltinPhoto, ...] = (
    BuiltinPhoto("skimage", "data/camera.png", "CC0", "scikit-image: cameraman, Lav Varshney"),
    BuiltinPhoto(
        "skimage", "data/coins.png", "No known copyright restrictions", "scikit-image: coins"
    ),
    BuiltinPhoto(
        "skimage", "data/hubble_deep_field.jpg", "Public domain", "scikit-image: Hubble, NASA"
    ),
    BuiltinPhoto(
        "skimage", "data/ihc.png", "No known copyright restrictions", "scikit-image: IHC stain"
    ),
    BuiltinPhoto("skimage", "data/retina.jpg", "CC0 1.0", "scikit-image: human retina"),
    BuiltinPhoto("skimage", "data/brick.png", "CC0", "scikit-image: brick wall, CC0Textures"),
    BuiltinPhoto("skimage", "data/grass.png", "CC0", "scikit-image: grass, CC0Textures"),
    BuiltinPhoto("skimage", "data/gravel.png", "CC0", "scikit-image: gravel, CC0Textures"),
    BuiltinPhoto("skimage", "data/text.png", "Public domain", "scikit-image: text"),
    BuiltinPhoto(
        "sklearn", "datasets/images/china.jpg", "CC BY 2.0", "scikit-learn: china, danielbuechele"
    ),
    BuiltinPhoto(
        "sklearn", "datasets/images/flower.jpg", "CC BY 2.0", "scikit-learn: flower, vultilion"
    ),
)


def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photos() -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every built-in photo that is installed: samples first."""
    out: list[tuple[str, bytes]] = []
    folder = resources.files("convscope") / "data" / "samples"
    for filename, (name, _licence, _source) in SAMPLES.items():
        out.append((name, (folder / filename).read_bytes()))
    for photo in PHOTOS:
        root = _package_root(photo.package)
        if root is None:
            continue
        path = root / photo.relative
        if path.is_file():
            out.append((Path(photo.relative).stem, path.read_bytes()))
    return out
