"""The output commands of ``toxrt``: report, video, stats, export (hooked into cli.py).

Each reads a session folder; its settings come from the session's parameters.toml, then
``--load FILE``, then ``--key value`` flags with the parameter-file names (as for ``toxrt track``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

Overrides = Callable[[list[str]], dict]


def add_output_commands(commands, overrides: Overrides) -> None:
    """Add the subcommands; ``overrides`` turns left-over ``--key value`` arguments into a dict."""
    stats = commands.add_parser("stats", help="kinematics and arena statistics of a session (CSV)",
                                description="Settings: the [stats] table and px_per_cm of the session's parameters, "
                                            "then --load FILE, then flags (--stats.zones, --px_per_cm 8.2, ...).")
    stats.add_argument("session")
    stats.add_argument("--load", default=None, help="TOML file with a [stats] table (zones, thresholds) or px_per_cm")
    stats.add_argument("--out", default=None, help="output folder (default: SESSION/stats)")
    stats.set_defaults(run=lambda args, extra: cmd_stats(args, extra, overrides))

    export = commands.add_parser("export", help="tidy CSV and SLEAP analysis h5 (loads in movement)")
    export.add_argument("session")
    export.add_argument("--format", choices=["all", "tidy", "sleap"], default="all")
    export.add_argument("--out", default=None, help="output folder (default: SESSION/exports)")
    export.set_defaults(run=lambda args, extra: cmd_export(args, extra, overrides))

    video = commands.add_parser("video", help="overlay video: trails, identities, status, probability (WebM)")
    video.add_argument("session")
    video.add_argument("--start", type=int, default=0, help="first frame (default 0)")
    video.add_argument("--end", type=int, default=None, help="frame after the last (default: the end)")
    video.add_argument("--scale", type=float, default=1.0, help="size reduction, e.g. 0.5 (default 1)")
    video.add_argument("--trail", type=int, default=20, help="trail length in frames (default 20)")
    video.add_argument("--per-animal", action="store_true", help="one video per identity, centred on it")
    video.add_argument("--crop", type=float, default=6.0, help="per-animal crop side in body lengths (default 6)")
    video.add_argument("--low-probability", type=float, default=0.5,
                       help="labels below this identity probability get a '?' (default 0.5)")
    video.add_argument("--codec", choices=["vp8", "vp9"], default="vp8", help="WebM codec (default vp8)")
    video.add_argument("--out", default=None, help="output folder (default: SESSION/videos)")
    video.add_argument("--quiet", action="store_true", help="no progress bar")
    video.set_defaults(run=lambda args, extra: cmd_video(args, extra, overrides))

    report = commands.add_parser("report", help="one self-contained HTML page: quality, trajectories, timeline, "
                                                "probabilities, speeds, statistics")
    report.add_argument("session")
    report.add_argument("--load", default=None, help="TOML file with a [stats] table or px_per_cm (as for stats)")
    report.add_argument("--out", default=None, help="the HTML file (default: SESSION/report.html)")
    report.set_defaults(run=lambda args, extra: cmd_report(args, extra, overrides))


def cmd_stats(args: argparse.Namespace, extra: list[str], overrides: Overrides) -> int:
    from .outputs.stats import run_stats

    print("\n".join(run_stats(args.session, args.load, overrides(extra), args.out)))
    return 0


def cmd_export(args: argparse.Namespace, extra: list[str], overrides: Overrides) -> int:
    from .outputs.export import FORMATS, export_session
    from .outputs.results import open_session

    formats = FORMATS if args.format == "all" else [args.format]
    results, _ = open_session(args.session, None, overrides(extra))
    for path in export_session(results, list(formats), Path(args.out) if args.out else None):
        print(f"written: {path}")
    return 0


def cmd_video(args: argparse.Namespace, extra: list[str], overrides: Overrides) -> int:
    from .outputs.results import open_session
    from .outputs.video import VideoOptions, make_videos

    results, config = open_session(args.session, None, overrides(extra))
    options = VideoOptions(start=args.start, end=args.end, scale=args.scale, trail=args.trail,
                           per_animal=args.per_animal, crop_body_lengths=args.crop,
                           low_probability=args.low_probability, codec=args.codec)
    for path in make_videos(results, config, options, Path(args.out) if args.out else None, progress=not args.quiet):
        print(f"written: {path}")
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str], overrides: Overrides) -> int:
    from .outputs.report import write_report
    from .outputs.results import open_session

    results, config = open_session(args.session, args.load, overrides(extra))
    print(f"written: {write_report(results, config, Path(args.out) if args.out else None)}")
    return 0
