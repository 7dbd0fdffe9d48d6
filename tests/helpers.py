"""Builders and fakes shared by several test files (each file's own helpers stay in it)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from toxrt.config import RecordingConfig
from toxrt.io.recording import SessionWriter
from toxrt.io.trajectory_files import write_trajectories
from toxrt.trajectories import assemble_trajectories
from toxrt.types import BLOB_RECORD_DTYPE, FRAGMENT_RECORD_DTYPE, Blobs, FrameResult

ROOT = Path(__file__).resolve().parents[1]
FPS = 10.0  # of the sessions make_session writes


def toxrt(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``toxrt`` command of this checkout in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "toxrt", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now (TCP by default, UDP with ``socket.SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 now."""
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class FakeClock:
    """A clock whose ``sleep`` advances time; ``gate`` (optional) makes each sleep wait for the consumer."""

    def __init__(self, t0: float, gate: threading.Semaphore | None = None):
        self.t, self.gate, self.sleeps = t0, gate, []

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if self.gate is not None:
            assert self.gate.acquire(timeout=10)
        self.sleeps.append(seconds)
        self.t += seconds


def make_blobs(xy, area, oversized=None, bins: int = 8, crop: int = 8) -> Blobs:
    """Blobs with the given centroids (n, 2), areas (n,) and oversized flags (n,) (default none);
    other features are placeholders."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    n = xy.shape[0]
    area = np.broadcast_to(np.asarray(area, float), (n,)).copy()
    oversized = np.zeros(n, bool) if oversized is None else np.asarray(oversized, bool)
    return Blobs(
        centroid=xy,
        area=area,
        orientation=np.zeros(n),
        bbox=np.zeros((n, 4), np.int32),
        hu=np.ones((n, 7)),
        histogram=np.full((n, bins), 1.0 / bins, np.float32),
        crop=np.zeros((n, crop, crop), np.uint8),
        oversized=oversized,
    )


# A small synthetic session for the offline tests (no torch here). N animals are ellipses with
# different stripe patterns, rendered as 20 px identification images with random head/tail flips,
# brightness jitter and noise. Each animal's track is cut into fragments (6..50 frames) separated by
# short crossings, with a few tiny fragments (< 4 images); a live labelling gives every fragment its
# true identity except a scrambled fraction.

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


def write_as_session(fake: FakeSession, folder: Path) -> None:
    """Record the fake session through the real SessionWriter, then write its live trajectories."""
    meta = {"number_of_animals": 4, "frames_per_second": 25.0, "width": 500, "height": 500,
            "body_length_px": 20.0, "video_paths": []}
    size = fake.images.shape[1]
    with SessionWriter(folder, RecordingConfig(), meta, 'trajectories_formats = ["npy"]\n', None, size, 4) as w:
        for frame in range(fake.n_frames):
            sel = np.flatnonzero(fake.blobs["frame"] == frame)
            rows = fake.blobs[sel]
            k = sel.size
            blobs = Blobs(centroid=np.stack([rows["x"], rows["y"]], axis=1), area=rows["area"].astype(float),
                          orientation=np.zeros(k), bbox=np.zeros((k, 4), np.int32), hu=np.zeros((k, 7)),
                          histogram=np.full((k, 4), 0.25, np.float32), crop=fake.images[sel],
                          oversized=rows["is_crossing"].copy())
            w.write_frame(FrameResult(frame, frame / 25.0, blobs, rows["fragment"].copy(), rows["is_crossing"].copy(),
                                      rows["identity"].copy(), rows["probability"].copy(),
                                      np.zeros(k, np.uint8)))
    live = {int(r["fragment"]): (int(r["identity"]), 0.9) for r in fake.fragments if r["identity"] > 0}
    traj, prob, status = assemble_trajectories(fake.blobs, live, fake.n_frames, 4, max_crossing_gap=10)
    write_trajectories(folder / "trajectories", traj, prob, status, meta, ["npy"])


def make_session(folder, trajectories, parameters="", length_unit=None, width=200, height=100):
    """A session folder with only what the output tools read."""
    n_frames, n = trajectories.shape[:2]
    known = ~np.isnan(trajectories[..., 0])
    status = np.where(known, 0, -1).astype(np.int8)
    meta = {"frames_per_second": FPS, "body_length_px": 10.0, "width": width, "height": height,
            "video_paths": [], "length_unit": length_unit}
    write_trajectories(folder / "trajectories", trajectories, known[..., None].astype(float), status, meta, ["npy"])
    (folder / "session.json").write_text(json.dumps({"summary": {}}))
    (folder / "parameters.toml").write_text(parameters)
    return folder
