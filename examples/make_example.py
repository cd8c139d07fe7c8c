"""Rebuild the bundled example composite from two public-domain photos.

Sources (both ship with scikit-image as ``skimage.data.astronaut()`` and ``skimage.data.rocket()``,
and are in ``../shared/data/natural_photos/pypi/``):

* ``astronaut``: NASA portrait of Eileen Collins (public domain, NASA).
* ``rocket``: Falcon 9 at dusk, SpaceX (released into the public domain, CC0).

The astronaut is cut out with OpenCV GrabCut, scaled and pasted into the dusk scene with a
1.5 px feathered edge: a studio-lit object in a blue-hour scene, the kind of mismatch the tool
fixes. Usage: ``python examples/make_example.py [PHOTO_DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent


def main(photo_dir: Path) -> None:
    person = cv2.imread(str(photo_dir / "skimage_astronaut.png"))
    scene = cv2.imread(str(photo_dir / "skimage_rocket.jpg"))
    state = np.full(person.shape[:2], cv2.GC_BGD, np.uint8)
    state[10:, 15:375] = cv2.GC_PR_BGD
    cv2.ellipse(state, (225, 250), (120, 230), 0, 0, 360, cv2.GC_PR_FGD, -1)
    cv2.ellipse(state, (210, 222), (72, 55), 0, 0, 360, cv2.GC_FGD, -1)  # dark neck ring
    cv2.circle(state, (395, 440), 118, cv2.GC_BGD, -1)  # the helmet in front is not pasted
    models = (np.zeros((1, 65)), np.zeros((1, 65)))
    cv2.setRNGSeed(0)
    cv2.grabCut(person, state, None, *models, 8, cv2.GC_INIT_WITH_MASK)
    cut = np.isin(state, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    scale = 0.62
    person = cv2.resize(person, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cut = cv2.resize(cut, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cut = cv2.GaussianBlur(cut, (0, 0), 1.5)
    h, w = cut.shape
    top, left = scene.shape[0] - h, 70
    mask = np.zeros(scene.shape[:2], np.float32)
    mask[top:, left : left + w] = cut
    layer = np.zeros_like(scene)
    layer[top:, left : left + w] = person
    comp = scene * (1 - mask[..., None]) + layer * mask[..., None]
    cv2.imwrite(
        str(HERE / "astronaut_launch.jpg"),
        comp.round().astype(np.uint8),
        [cv2.IMWRITE_JPEG_QUALITY, 93],
    )
    cv2.imwrite(str(HERE / "astronaut_launch_mask.png"), (mask * 255).round().astype(np.uint8))


if __name__ == "__main__":
    default = HERE.parent.parent / "shared" / "data" / "natural_photos" / "pypi"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
