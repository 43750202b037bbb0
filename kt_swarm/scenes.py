"""Offline test beds for segmentation and saliency (issue 13), composed from Fashion-MNIST items.

A scene is a `canvas` x `canvas` grayscale image holding 1 to `max_items` Fashion-MNIST items (28 x 28)
at random places; a later item covers an earlier one. From the same scene:

- the segmentation mask: per pixel, 0 for background or 1 + the Fashion-MNIST class of the item seen
  there (11 classes). An item is its silhouette: the pixels of intensity >= FAINT with the holes inside
  them filled (a dark pattern on a shirt is still the shirt); the silhouette hides what is behind it.
  Its outermost ring of pixels is IGNORE (255, Pascal VOC's value), as VOC marks object boundaries.
- the saliency-like map, a documented function of the scene, not a recording of eyes: each visible item
  adds an isotropic Gaussian at the centroid of its visible pixels, sigma half the square root of their
  count, weighted by its class's salience (SALIENCE: footwear and bags draw the eye, garments less,
  trousers least) times its visible pixels' mean intensity; a weak centre bias (weight 0.1, sigma
  canvas / 4) is added, as human fixation maps have one; scaled to 0..255. Where the eye goes depends
  on what the items are, as faces and text draw real fixations, so a model must recognise them: finding
  the blobs alone reaches a CC of about 0.97 on maps weighted by intensity only.

Pure numpy, deterministic in the seed: the same arguments give the same scenes in every process.
"""
from __future__ import annotations

import numpy as np

FAINT = 16
IGNORE = 255
CENTRE_BIAS = 0.1
# Per Fashion-MNIST class: t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle-boot.
SALIENCE = (0.4, 0.1, 0.4, 0.4, 0.4, 1.0, 0.4, 1.0, 1.0, 1.0)


def compose_scenes(items: np.ndarray, labels: np.ndarray, n: int, *, canvas: int = 56, max_items: int = 3,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n scenes from `items` uint8 [m, 28, 28] with class `labels` [m]: (images uint8 [n, canvas, canvas],
    masks uint8 [n, canvas, canvas], maps uint8 [n, canvas, canvas])."""
    size = items.shape[-1]
    if canvas < size:
        raise ValueError(f"canvas {canvas} is smaller than an item ({size})")
    rng = np.random.default_rng(seed)
    images = np.zeros((n, canvas, canvas), np.uint8)
    masks = np.zeros((n, canvas, canvas), np.uint8)
    maps = np.zeros((n, canvas, canvas), np.uint8)
    rows, cols = np.mgrid[0:canvas, 0:canvas].astype(np.float64)
    centre = np.exp(-((rows - (canvas - 1) / 2) ** 2 + (cols - (canvas - 1) / 2) ** 2) / (2 * (canvas / 4) ** 2))
    for s in range(n):
        owner = np.full((canvas, canvas), -1)  # which placed item is seen at each pixel
        placed = []
        for k in range(int(rng.integers(1, max_items + 1))):
            index = int(rng.integers(len(items)))
            top, left = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
            item, (inside, rim) = items[index], silhouette(items[index])
            window = (slice(top, top + size), slice(left, left + size))
            images[s][window] = np.where(inside, item, images[s][window])
            masks[s][window] = np.where(rim, IGNORE, np.where(inside, 1 + int(labels[index]), masks[s][window]))
            owner[window] = np.where(inside, k, owner[window])
            placed.append(index)
        density = CENTRE_BIAS * centre
        for k, index in enumerate(placed):
            seen = owner == k
            if not seen.any():  # covered by later items
                continue
            r, c = rows[seen].mean(), cols[seen].mean()
            sigma = np.sqrt(seen.sum()) / 2
            weight = SALIENCE[int(labels[index])] * images[s][seen].mean() / 255
            density = density + weight * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))
        maps[s] = np.rint(255 * density / density.max()).astype(np.uint8)
    return images, masks, maps


def silhouette(item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, rim) bool masks of one item: the pixels not reachable from the window's border through dark
    (< FAINT) pixels, and those of them that touch a reachable one (4-neighbours) or the border."""
    dark = item < FAINT
    outside = np.zeros_like(dark)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = dark[0, :], dark[-1, :], dark[:, 0], dark[:, -1]
    while True:  # flood fill from the border through dark pixels
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= dark
        if (grown == outside).all():
            break
        outside = grown
    inside = ~outside
    padded = np.pad(outside, 1, constant_values=True)
    touches = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return inside, inside & touches
