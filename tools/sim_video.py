"""A simulated arena as an encoded video file, for the benchmarks that need decoding in the path.

    .venv/bin/python tools/sim_video.py OUT_DIR --size 1280x720 --animals 20 --frames 3000 --fps 120

Renders the arena with ``toxrt.sim.writer.write_simulation`` (lossless video, ground truth, parameter
file), then encodes it as lab videos usually are: H.264 (libx264, yuv420p, through the ffmpeg program
that tools/install_system_deps.sh installs) or MPEG-4 part 2 (``mp4v``, through OpenCV). The
parameter file is rewritten to track ``video.mp4``. Returns or prints the parameter file.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toxrt.config import build_config  # noqa: E402
from toxrt.sim.writer import write_simulation  # noqa: E402

CODECS = ("h264", "mp4v")


def encode(lossless: Path, out: Path, fps: float, codec: str) -> None:
    if codec == "h264":
        if shutil.which("ffmpeg") is None:
            raise SystemExit("h264 needs the ffmpeg program (bash tools/install_system_deps.sh), or use --codec mp4v")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-nostdin", "-y", "-i", str(lossless), "-c:v", "libx264",
                        "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-r", f"{fps:g}", str(out)],
                       check=True)
        return
    source = cv2.VideoCapture(str(lossless))
    width, height = int(source.get(cv2.CAP_PROP_FRAME_WIDTH)), int(source.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    while True:
        ok, image = source.read()
        if not ok:
            break
        writer.write(image)
    writer.release()
    source.release()


def simulated_video(folder: Path, width: int, height: int, animals: int, frames: int, fps: float = 25.0,
                    codec: str = "h264", body_length_px: float = 40.0, seed: int = 11) -> Path:
    """Write ``folder/video.mp4`` with its ground truth; returns the parameter file that tracks it.
    An existing video made with the same arguments is reused."""
    folder = Path(folder)
    stamp = folder / "made_with.txt"
    made_with = f"{width}x{height} animals={animals} frames={frames} fps={fps:g} codec={codec} " \
                f"body={body_length_px:g} seed={seed}\n"
    params = folder / "params.toml"
    if stamp.is_file() and stamp.read_text() == made_with and (folder / "video.mp4").is_file():
        return params
    sim = build_config({"sim": {"width": width, "height": height, "frames": frames, "fps": fps,
                                "body_length_px": body_length_px, "seed": seed}}).sim
    paths = write_simulation(folder, sim, animals)
    encode(paths["video"], folder / "video.mp4", fps, codec)
    paths["video"].unlink()
    params.write_text(params.read_text().replace('"video.avi"', '"video.mp4"'))
    stamp.write_text(made_with)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--codec", choices=CODECS, default="h264")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    print(simulated_video(Path(args.out_dir), width, height, args.animals, args.frames, args.fps, args.codec))


if __name__ == "__main__":
    main()
