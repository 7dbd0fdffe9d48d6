"""What the offline stage reads from a session: identification images on demand, checked first.

Everything here depends only on these attributes of a loaded session (duck typing, see
``toxrt.io.session_reader.Session``):

``meta``       dict with at least ``number_of_animals``
``blobs``      rows of ``BLOB_RECORD_DTYPE`` (one per blob per frame)
``fragments``  rows of ``FRAGMENT_RECORD_DTYPE``
``crops(rows)`` uint8 (k, s, s) identification images of the given blob rows (memmap-backed)

No torch here: the arrays are plain numpy and the images come out as float32 batches. Fragments,
their coexistence and global fragments are ``toxrt.fragments``'.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import SessionError
from ..fragments import FragmentTable

log = logging.getLogger(__name__)

# Fragments with fewer images are left out of training (paper, Appendix 2 "Pairs selection").
MIN_TRAINING_IMAGES = 4


class SessionLike(Protocol):
    """What the offline stage reads from a session (see module docstring)."""

    meta: dict[str, Any]
    blobs: np.ndarray
    fragments: np.ndarray

    def crops(self, rows: np.ndarray) -> np.ndarray: ...


def trainable(table: FragmentTable, min_images: int = MIN_TRAINING_IMAGES) -> np.ndarray:
    """bool (F,): fragments with enough images to sample pairs from."""
    return table.n_images >= min_images


class ImageLoader:
    """Identification images read on demand and resized to ``image_size`` (memory stays flat).

    ``load(rows)`` returns float32 (k, 1, S, S) in [0, 1]. Rows are read in sorted order (sequential
    memmap access) and returned in the order asked.
    """

    def __init__(self, session: SessionLike, image_size: int) -> None:
        self._session = session
        self.image_size = int(image_size)

    def load(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return np.zeros((0, 1, self.image_size, self.image_size), np.float32)
        uniq, inverse = np.unique(rows, return_inverse=True)
        crops = np.asarray(self._session.crops(uniq))
        if crops.ndim != 3 or crops.shape[0] != uniq.shape[0]:
            raise SessionError(f"session returned identification images of shape {crops.shape} "
                               f"for {uniq.shape[0]} rows")
        images = resize_batch(crops, self.image_size)
        out = images[inverse].astype(np.float32)
        out *= 1.0 / 255.0
        return out[:, None]


def resize_batch(crops: np.ndarray, size: int) -> np.ndarray:
    """uint8 (k, s, s) -> uint8 (k, size, size), area interpolation when shrinking.

    One cv2.resize per image (~15 us at 40 px): OpenCV's area resize takes at most 4 channels, so
    stacking images as channels is not an option.
    """
    k, s, _ = crops.shape
    if s == size:
        return crops
    interp = cv2.INTER_AREA if size < s else cv2.INTER_LINEAR
    out = np.empty((k, size, size), np.uint8)
    for i in range(k):
        out[i] = cv2.resize(crops[i], (size, size), interpolation=interp)
    return out


def check_session(session: SessionLike, where: str) -> int:
    """Validate what the offline stage needs; returns the number of animals.

    Raises SessionError (one line naming ``where``) for an old format, a missing animal count, or a
    session recorded without identification images.
    """
    meta = getattr(session, "meta", None)
    if not isinstance(meta, dict):
        raise SessionError(f"{where}: not a toxrt session (no session metadata)")
    n = int(meta.get("number_of_animals", 0) or 0)
    if n < 1:
        raise SessionError(f"{where}: session.json has no number_of_animals; refinement needs it")
    if int(meta.get("identification_image_size", 0) or 0) <= 0 or meta.get("identification_images") is False:
        raise SessionError(f"{where}: session was recorded without identification images "
                           "(recording.identification_images = false); refinement needs them")
    blobs = session.blobs
    if len(blobs) == 0:
        raise SessionError(f"{where}: session has no blob rows")
    has_crop = getattr(session, "has_crop", None)
    if has_crop is not None and not np.any(has_crop):
        raise SessionError(f"{where}: the identification images file is missing or empty; refinement needs it")
    try:
        probe = np.asarray(session.crops(np.array([0, len(blobs) - 1])))
    except (OSError, ValueError, IndexError) as exc:
        raise SessionError(f"{where}: identification images cannot be read ({exc})") from None
    if probe.ndim != 3 or probe.shape[0] != 2:
        raise SessionError(f"{where}: identification images have an unexpected shape {probe.shape}")
    return n
