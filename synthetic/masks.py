"""
Connected pieces of a 2-D bool mask, 4-connected (up, down, left, right), in whole-array numpy:
radiograph.finding_masks keeps a finding's largest piece of change, its holes filled.
"""

import numpy as np


def components(mask):
    """(labels, n): the 4-connected components of a 2-D bool array, labelled 1..n, 0 off the mask.
    Each pixel starts with its own number (1 + its flat index) and, until none changes, takes the
    largest of its own, its neighbours' and the number held by the pixel its number names (a jump
    that spreads a number along a long piece in few rounds); the numbers left are renumbered."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        p = np.pad(labels, 1)
        new = np.maximum.reduce([labels, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        new = np.where(mask, new.ravel()[new - 1], 0)
        if np.array_equal(new, labels):
            break
        labels = new
    numbers, renumbered = np.unique(labels[mask], return_inverse=True)
    labels[mask] = renumbered + 1
    return labels, len(numbers)


def largest_component(mask):
    """The largest 4-connected component of mask (of equal ones, the one ending first in row
    order); empty if mask is."""
    labels, n = components(mask)
    return labels == np.bincount(labels.ravel())[1:].argmax() + 1 if n else mask


def fill_holes(mask):
    """mask with its holes filled: the pixels off it that no 4-connected path off it joins to the border."""
    labels, _ = components(~mask)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return ~np.isin(labels, border[border > 0])
