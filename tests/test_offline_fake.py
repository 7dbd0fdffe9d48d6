"""A small synthetic session for the offline tests (no torch here), and checks of the fake itself.

N animals are ellipses with different stripe patterns, rendered as 20 px identification images
with random head/tail flips, brightness jitter and noise. Each animal's track is cut into fragments
(6..50 frames) separated by short crossings, with a few tiny fragments (< 4 images); a live
labelling gives every fragment its true identity except a scrambled fraction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from toxrt.types import BLOB_RECORD_DTYPE, FRAGMENT_RECORD_DTYPE


@dataclass
class FakeSession:
    """Duck-typed stand-in for toxrt.io.session_reader.Session."""

    meta: dict[str, Any]
    blobs: np.ndarray
    fragments: np.ndarray
    n_frames: int
    images: np.ndarray  # uint8 (rows, s, s)
    truth: dict[int, int] = field(default_factory=dict)  # fragment id -> true identity 1..N

    def crops(self, rows: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(rows, np.int64)].copy()


def render_animal(identity: int, rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """uint8 (size, size): a bright ellipse on black with an identity-specific pattern."""
    up = 4  # draw at 4x and shrink, for smooth edges
    big = np.zeros((size * up, size * up), np.uint8)
    c = size * up // 2
    axes = (int(size * up * 0.42), int(size * up * 0.2))
    cv2.ellipse(big, (c, c), axes, 0, 0, 360, 170, -1)
    mask = big > 0
    x = np.arange(size * up)[None, :].repeat(size * up, 0)
    y = np.arange(size * up)[:, None].repeat(size * up, 1)
    if identity % 4 == 0:  # two wide vertical dark bands
        pattern = ((x - c) // (size * up // 6)) % 2 == 0
    elif identity % 4 == 1:  # a dark spot at the head
        pattern = (x - c - axes[0] * 0.5) ** 2 + (y - c) ** 2 < (axes[1] * 0.7) ** 2
    elif identity % 4 == 2:  # a dark horizontal stripe along the body
        pattern = np.abs(y - c) < axes[1] * 0.35
    else:  # plain, brighter body
        pattern = np.zeros_like(mask)
        big[mask] = 230
    big[mask & pattern] = 70
    img = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
    if rng.random() < 0.5:
        img = img[:, ::-1]  # head/tail ambiguity of the main-axis alignment
    if rng.random() < 0.5:
        img = img[::-1]
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 10, img.shape) * (img > 0)
    img = np.roll(img, rng.integers(-1, 2, size=2), axis=(0, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_fake_session(n_animals: int = 4, n_frames: int = 300, size: int = 20, scramble: float = 0.2,
                      seed: int = 0) -> FakeSession:
    rng = np.random.default_rng(seed)
    rows: list[tuple] = []
    truth: dict[int, int] = {}
    live: dict[int, int] = {}
    next_id = 0
    for animal in range(1, n_animals + 1):
        t = int(rng.integers(0, 4))
        while t < n_frames:
            tiny = rng.random() < 0.1
            length = int(rng.integers(2, 4)) if tiny else int(rng.integers(6, 50))
            frames = range(t, min(t + length, n_frames))
            fid = next_id
            next_id += 1
            truth[fid] = animal
            wrong = rng.random() < scramble
            live[fid] = int(rng.choice([a for a in range(1, n_animals + 1) if a != animal])) if wrong else animal
            rows += [(f, fid, False, animal) for f in frames]
            t += length
            gap = int(rng.integers(1, 4))
            cross_id = next_id
            next_id += 1
            rows += [(f, cross_id, True, animal) for f in range(t, min(t + gap, n_frames))]
            t += gap
    blobs = np.zeros(len(rows), BLOB_RECORD_DTYPE)
    data = np.array([(r[0], r[1], r[2]) for r in rows], dtype=[("f", "i8"), ("g", "i8"), ("c", "?")])
    blobs["frame"], blobs["fragment"], blobs["is_crossing"] = data["f"], data["g"], data["c"]
    blobs = blobs[np.argsort(blobs["frame"], kind="stable")]
    animal_of_row = np.array([r[3] for r in rows])[np.argsort(data["f"], kind="stable")]
    blobs["x"] = rng.uniform(0, 500, len(blobs))
    blobs["y"] = rng.uniform(0, 500, len(blobs))
    blobs["area"] = 200
    blobs["probability"] = 0.9
    blobs["time_s"] = blobs["frame"] / 25.0
    blobs["identity"] = [0 if c else live[g] for g, c in zip(blobs["fragment"], blobs["is_crossing"])]
    images = np.stack([render_animal(a - 1, rng, size) for a in animal_of_row])
    ids = np.unique(blobs["fragment"])
    fragments = np.zeros(ids.size, FRAGMENT_RECORD_DTYPE)
    for k, fid in enumerate(ids):
        frames = blobs["frame"][blobs["fragment"] == fid]
        crossing = bool(blobs["is_crossing"][blobs["fragment"] == fid][0])
        fragments[k] = (fid, frames.min(), frames.max(), frames.size, crossing, 0 if crossing else live[fid])
    meta = {"format": "toxrt-session-1", "number_of_animals": n_animals, "identification_image_size": size,
            "frames_per_second": 25.0}
    return FakeSession(meta, blobs, fragments, n_frames, images, truth)


def test_fake_session_has_fragments_crossings_and_scrambled_live_labels():
    s = make_fake_session(seed=1)
    individual = s.fragments[~s.fragments["is_crossing"]]
    assert (individual["n_samples"] < 4).any() and (individual["n_samples"] >= 6).any()
    assert s.fragments["is_crossing"].any()
    wrong = [f for f in individual if f["identity"] != s.truth[int(f["fragment"])]]
    assert 0.05 < len(wrong) / individual.size < 0.4
    assert s.crops(np.array([0, 5])).shape == (2, 20, 20)
