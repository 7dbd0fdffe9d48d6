"""Time ``Segmenter.detect`` on synthetic frames with 20 dark elliptical animals.

Usage: python tools/bench_segment.py [--frames 300] [--animals 20]
Prints p50/p99 in ms for 1920x1080 and 1280x720, with and without background subtraction.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from toxrt.features import identification_image_size
from toxrt.segment import SegmentationParams, Segmenter


def render(width: int, height: int, animals: int, rng: np.random.Generator,
           body_px: float) -> np.ndarray:
    """A light, slightly noisy arena with dark, textured elliptical animals."""
    image = np.full((height, width), 200, np.uint8)
    noise = rng.normal(0, 3, (height, width))
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    margin = int(body_px)
    for _ in range(animals):
        cx = int(rng.integers(margin, width - margin))
        cy = int(rng.integers(margin, height - margin))
        angle = float(rng.uniform(0, 180))
        grey = int(rng.integers(30, 90))
        axes = (int(body_px / 2), int(body_px / 6))
        cv2.ellipse(image, (cx, cy), axes, angle, 0, 360, grey, -1)
        cv2.ellipse(image, (cx, cy), (axes[0] // 2, axes[1] // 2), angle, 0, 360, grey + 40, -1)
    return image


def bench(width: int, height: int, animals: int, frames: int, use_bkg: bool) -> tuple[float, float, int]:
    rng = np.random.default_rng(0)
    body_px = 0.035 * width  # ~67 px at 1080p
    images = [render(width, height, animals, rng, body_px) for _ in range(8)]
    background = np.full((height, width), 200, np.float32)
    params = SegmentationParams(
        intensity_ths=(40.0, 255.0) if use_bkg else (0.0, 150.0),
        area_ths=(50.0, np.inf),
        use_bkg=use_bkg,
        histogram_bins=32,
        crop_size=identification_image_size(body_px),
        single_animal_area=np.pi * body_px / 2 * body_px / 6,
    )
    segmenter = Segmenter(params, background if use_bkg else None, None)
    n_blobs = len(segmenter.detect(images[0]))
    for image in images:  # warm-up
        segmenter.detect(image)
    times = np.empty(frames)
    for i in range(frames):
        image = images[i % len(images)]
        t0 = time.perf_counter()
        segmenter.detect(image)
        times[i] = time.perf_counter() - t0
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3), n_blobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--threads", type=int, default=-1, help="cv2.setNumThreads (-1: leave)")
    args = parser.parse_args()
    if args.threads >= 0:
        cv2.setNumThreads(args.threads)
    for width, height in ((1920, 1080), (1280, 720)):
        for use_bkg in (False, True):
            p50, p99, n = bench(width, height, args.animals, args.frames, use_bkg)
            print(f"{width}x{height} use_bkg={use_bkg!s:5} blobs={n:2d}  p50 {p50:.2f} ms  p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
