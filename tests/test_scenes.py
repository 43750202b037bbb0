"""The segmentation and saliency test beds composed from Fashion-MNIST items (kt_swarm/scenes.py)."""
import numpy as np
import pytest

from kt_swarm.data import FASHION_MNIST_FILES, _find_fashion_mnist, _read_idx
from kt_swarm.scenes import FAINT, IGNORE, compose_scenes, silhouette

pytestmark = pytest.mark.fast  # pure arrays: no Ray, no training


def fashion_items(m=200):
    root = _find_fashion_mnist(None)
    images = _read_idx(next(root.glob(FASHION_MNIST_FILES["test_images"] + "*")))[:m]
    labels = _read_idx(next(root.glob(FASHION_MNIST_FILES["test_labels"] + "*")))[:m]
    return images, labels


def test_scenes_are_deterministic_and_their_masks_say_what_is_seen():
    items, labels = fashion_items()
    images, masks, maps = compose_scenes(items, labels, 40, canvas=56, max_items=3, seed=5)
    again = compose_scenes(items, labels, 40, canvas=56, max_items=3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((images, masks, maps), again))
    assert not np.array_equal(images, compose_scenes(items, labels, 40, seed=6)[0])
    assert images.shape == masks.shape == maps.shape == (40, 56, 56)
    assert set(np.unique(masks)) <= set(range(11)) | {IGNORE}
    # Background is dark; whatever is bright belongs to an item (its class, or its ignored rim).
    assert (images[masks == 0] < FAINT).all() and (masks[images >= FAINT] > 0).all()
    assert 0.02 < (masks == IGNORE).mean() < 0.2
    assert len(np.unique(masks[(masks > 0) & (masks < IGNORE)])) >= 8  # most classes occur


def test_a_silhouette_fills_holes_and_rings_the_outside():
    item = np.zeros((28, 28), np.uint8)
    item[5:20, 5:20] = 200
    item[10:14, 10:14] = 0  # a dark hole inside: still the item
    inside, rim = silhouette(item)
    assert inside[10:14, 10:14].all() and inside.sum() == 15 * 15
    assert rim.sum() == 4 * 14 and not rim[6:19, 6:19].any()


def test_a_scene_of_one_item_has_the_item_as_its_mask_and_its_map_peaks_on_it():
    items, labels = fashion_items()
    images, masks, maps = compose_scenes(items, labels, 30, canvas=56, max_items=1, seed=0)
    for image, mask, density in zip(images, masks, maps):
        ys, xs = np.nonzero(mask[:, :] != 0)
        top, left = ys.min(), xs.min()
        assert set(np.unique(mask[(mask > 0) & (mask < IGNORE)])) <= {mask[(mask > 0) & (mask < IGNORE)][0]}  # one class
        assert density.max() == 255
        peak = np.unravel_index(density.argmax(), density.shape)
        assert top <= peak[0] < top + 28 and left <= peak[1] < left + 28  # the item draws the eye, not the centre bias


def test_where_the_eye_goes_depends_on_what_the_item_is():
    """Two identical squares, one labelled a sneaker and one trousers: the map peaks on the sneaker."""
    square = np.zeros((28, 28), np.uint8)
    square[8:20, 8:20] = 200
    items, labels = np.stack([square, square]), np.array([7, 1])
    images, masks, maps = compose_scenes(items, labels, 200, canvas=56, max_items=2, seed=1)
    ratios = []
    for mask, density in zip(masks, maps):
        sneaker, trousers = mask == 8, mask == 2  # 1 + class
        if sneaker.sum() == trousers.sum() == 100:  # both whole (their rims ignored), neither covered
            ratios.append(int(density[sneaker].max()) / int(density[trousers].max()))
    # Near each other, the sneaker's Gaussian spills onto the trousers; it is always the higher one.
    assert len(ratios) >= 5 and min(ratios) > 1 and np.median(ratios) > 2
