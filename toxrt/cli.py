"""The ``toxrt`` command: the only module that reads argv.

    toxrt track --load params.toml [--number_of_animals 8] [--linking.max_unmatched_frames 4]
    toxrt track --video_paths fish.mp4 --number_of_animals 8
    toxrt config --defaults > params.toml
    toxrt video SESSION [--start 0 --end 500 --scale 0.5 --per-animal]
    toxrt report SESSION
    toxrt stats SESSION [--load zones.toml] [--px_per_cm 8.2]
    toxrt export SESSION [--format tidy|sleap]
    toxrt track --load params.toml --cameras left=camera:0 right=camera:1
    toxrt demo [--animals 8] [--frames 600]
    toxrt simulate OUT_DIR --animals 8 --frames 1500
    toxrt evaluate SESSION GROUND_TRUTH.csv
    toxrt refine SESSION
    toxrt finish SESSION
    toxrt listen [ADDRESS...] [--rig RIG.toml]
    toxrt rig RIG.toml
    toxrt batch PARAMS.toml... [--videos GLOB] [--refine] [--scheduler ADDRESS] [--workers N]

Any parameter-file key can be given as a flag with the same name (tables with a dot). User
mistakes end with one line on stderr and exit code 2; nothing is printed as a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .config import SimConfig, build_config, load_config, merge_dotted, parse_override
from .config_checks import DEFAULT_PUBLISH_ADDRESS
from .errors import ConfigError, ToxrtError
from .cli_outputs import add_output_commands
from .extras import MissingExtra

log = logging.getLogger("toxrt")

EXIT_USER_ERROR = 2


def _overrides(extra: list[str]) -> dict:
    """``--key value`` / ``--key=value`` pairs left over by argparse -> {dotted key: value}."""
    values: dict = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) <= 2:
            raise ConfigError(f"unexpected argument {token!r}")
        key, sep, text = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                raise ConfigError(f"--{key}: missing value")
            text = extra[i + 1]
            i += 1
        values[key.replace("-", "_") if "." not in key else key] = parse_override(key, text)
        i += 1
    return values


def _print_summary(summary: dict) -> None:
    from .tracking import summary_lines

    print("\n".join(summary_lines(summary)))


def _stop_on_signals() -> None:
    """Ctrl+C or SIGTERM: finish the session cleanly; a second one: exit at once.

    The first signal raises KeyboardInterrupt wherever the loop is (also while it waits for a
    camera), and the loop then finishes the session. The recording is flushed at least once per
    second, so leaving at the second signal keeps everything but the last second.
    """
    received = 0

    def handler(signum, frame):
        nonlocal received
        received += 1
        if received > 1:
            print("toxrt: stopped at once; the recording keeps what was flushed", file=sys.stderr)
            os._exit(130)
        print("toxrt: stopping; finishing the session (again to quit at once)", file=sys.stderr)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_track(args: argparse.Namespace, extra: list[str]) -> int:
    from .tracking import run_tracking

    overrides = _overrides(extra)
    if isinstance(overrides.get("video_paths"), str):  # --video_paths fish.mp4: one video
        overrides["video_paths"] = [overrides["video_paths"]]
    config = load_config(args.load, overrides)
    cameras = args.cameras or _several_live_sources(config.video_paths)
    if cameras:  # one process per camera
        from .rig import cameras_from_specs, plan_cameras, run_rig

        return run_rig(plan_cameras(cameras_from_specs(args.load, cameras), overrides=overrides, extra=extra))
    _stop_on_signals()
    summary = run_tracking(config, progress=not args.quiet, overwrite=args.overwrite)
    _print_summary(summary)
    return 0


def _several_live_sources(video_paths: list[str]) -> list[str]:
    from .config_checks import is_live_spec

    return video_paths if len(video_paths) > 1 and all(is_live_spec(p) for p in video_paths) else []


def cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    import numpy as np

    from .evaluation.groundtruth import GroundTruth
    from .evaluation.metrics import evaluate
    from .io.trajectory_files import load_trajectories
    from .tracking import run_tracking
    from .sim.arena import SimulatedArena

    values = {
        "name": "demo",
        "video_paths": ["sim:demo"],
        "number_of_animals": args.animals,
        "output_dir": str(Path(args.output_dir).resolve()),
        "sim": {"frames": args.frames, "seed": args.seed},
    }
    for key, value in _overrides(extra).items():
        merge_dotted(values, key, value)
    config = build_config(values)
    # Thresholds that suit the arena's rendering, unless given as flags.
    suited = SimulatedArena(config.sim, config.number_of_animals).tracking_parameters()
    config = build_config({**suited, **values})
    summary = run_tracking(config, progress=not args.quiet, overwrite=True)
    _print_summary(summary)
    arena = SimulatedArena(config.sim, config.number_of_animals)
    truth = GroundTruth(frames=np.arange(arena.n_frames), ids=list(range(1, config.number_of_animals + 1)),
                        positions=arena.positions, crossing=arena.crossing)
    predicted, _, _ = load_trajectories(Path(summary["session"]))
    try:
        report = evaluate(predicted, truth, arena.body_length_px)
    except MissingExtra as exc:
        print(f"accuracy against the simulator's ground truth: not computed ({exc})")
        return 0
    print("accuracy against the simulator's ground truth:")
    print("\n".join(report.summary_lines()))
    return 0


def cmd_simulate(args: argparse.Namespace, extra: list[str]) -> int:
    from .sim.writer import write_simulation

    sim = {"frames": args.frames, "seed": args.seed, "width": args.width, "height": args.height,
           "light_on_dark": args.light_on_dark}
    for key, value in _overrides(extra).items():
        sim[key.removeprefix("sim.")] = value
    config = build_config({"number_of_animals": args.animals, "sim": sim})
    paths = write_simulation(Path(args.out_dir), config.sim, config.number_of_animals, progress=not args.quiet)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from .evaluation.metrics import evaluate_session

    if extra:
        raise ConfigError(f"unexpected arguments {' '.join(extra)}")
    report = evaluate_session(Path(args.session), Path(args.ground_truth), body_length=args.body_length)
    print("\n".join(report.summary_lines()))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def cmd_refine(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        from .offline.refine import refine_config, refine_session
    except ImportError as exc:
        raise ToxrtError(f"the offline stage needs torch: pip install torch==2.13.0 ({exc})") from None
    # --max_batches 100 or --refine.max_batches 100: keys of the [refine] table, over the session's own
    overrides = {key.removeprefix("refine."): value for key, value in _overrides(extra).items()}
    cfg = refine_config(Path(args.session), overrides)
    summary = refine_session(Path(args.session), cfg, progress=not args.quiet)
    print("\n".join(summary.summary_lines()))
    return 0


def cmd_finish(args: argparse.Namespace, extra: list[str]) -> int:
    from .finish import finish_recorded_session

    if extra:
        raise ConfigError(f"unexpected arguments {' '.join(extra)}")
    _print_summary(finish_recorded_session(Path(args.session)))
    return 0


def cmd_listen(args: argparse.Namespace, extra: list[str]) -> int:
    from .stream.listen import listen

    if extra:
        raise ConfigError(f"unexpected arguments {' '.join(extra)}")
    addresses = list(args.address)
    if args.rig:
        from .rig import addresses_of

        addresses += addresses_of(args.rig)
    listen(addresses or DEFAULT_PUBLISH_ADDRESS, csv_path=args.csv, duration_s=args.duration)
    return 0


def cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    from importlib.resources import files

    if extra:
        raise ConfigError(f"unexpected arguments {' '.join(extra)}")
    print(files("toxrt").joinpath("default.toml").read_text(encoding="utf-8"), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toxrt", description="Real-time multi-animal tracking with live identities.")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    track = commands.add_parser(
        "track", help="track a recording or live source frame by frame",
        description="Any parameter key may follow as --key value (tables as --table.key), e.g. "
                    "toxrt track --video_paths fish.mp4 --number_of_animals 8. Every key, with its default and "
                    "meaning: toxrt config --defaults (the file toxrt/default.toml in the package).")
    track.add_argument("--load", default=None, help="parameter file (TOML); start from: toxrt config --defaults")
    track.add_argument("--overwrite", action="store_true", help="replace an existing session folder")
    track.add_argument("--quiet", action="store_true", help="no progress bar")
    track.add_argument("--cameras", nargs="+", default=None, metavar="[NAME=]SOURCE",
                       help="track these live, one process per camera (see toxrt rig)")
    track.set_defaults(run=cmd_track)

    demo = commands.add_parser("demo", help="the live engine on the built-in simulated arena")
    demo.add_argument("--animals", type=int, default=8)
    demo.add_argument("--frames", type=int, default=600)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output-dir", default="demo_output")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=cmd_demo)

    simulate = commands.add_parser("simulate", help="write a simulated video and its ground truth")
    simulate.add_argument("out_dir")
    simulate.add_argument("--animals", type=int, default=8)
    simulate.add_argument("--frames", type=int, default=SimConfig.frames)
    simulate.add_argument("--seed", type=int, default=SimConfig.seed)
    simulate.add_argument("--width", type=int, default=SimConfig.width)
    simulate.add_argument("--height", type=int, default=SimConfig.height)
    simulate.add_argument("--light-on-dark", action="store_true")
    simulate.add_argument("--quiet", action="store_true")
    simulate.set_defaults(run=cmd_simulate)

    evaluate = commands.add_parser("evaluate", help="identity accuracy of a session against ground truth")
    evaluate.add_argument("session", help="session folder or trajectories.npy")
    evaluate.add_argument("ground_truth", help="CSV with frame,id,x,y")
    evaluate.add_argument("--body-length", type=float, default=None, help="pixels (default: from the trajectories)")
    evaluate.add_argument("--json", default=None, help="also write the report as JSON here")
    evaluate.set_defaults(run=cmd_evaluate)

    refine = commands.add_parser(
        "refine", help="offline identity refinement of a recorded session (needs torch)",
        description="Settings: the [refine] table of the session's parameters.toml, then --key value flags with "
                    "its key names (e.g. --method contrastive --max_batches 100); toxrt config --defaults lists them.")
    refine.add_argument("session")
    refine.add_argument("--quiet", action="store_true")
    refine.set_defaults(run=cmd_refine)

    finish = commands.add_parser("finish", help="write the trajectories of a session whose run was killed")
    finish.add_argument("session", help="session folder")
    finish.set_defaults(run=cmd_finish)

    listen = commands.add_parser("listen", help="print the live position stream")
    listen.add_argument("address", nargs="*", help=f"publisher addresses, one per camera (default {DEFAULT_PUBLISH_ADDRESS})")
    listen.add_argument("--rig", default=None, help="also every camera of this rig file")
    listen.add_argument("--csv", default=None, help="also write the stream to this CSV file")
    listen.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    listen.set_defaults(run=cmd_listen)

    add_output_commands(commands, _overrides)  # report, video, stats, export (cli_outputs.py)

    config = commands.add_parser("config", help="print every parameter with its default and meaning (TOML)")
    config.add_argument("--defaults", action="store_true", required=True,
                        help="print the default parameter file (save it and edit it: toxrt config --defaults > params.toml)")
    config.set_defaults(run=cmd_config)

    from . import batch_cluster, rig
    batch_cluster.add_parser(commands)
    rig.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args, extra)
    except ToxrtError as exc:
        print(f"toxrt: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("toxrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
