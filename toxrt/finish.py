"""Finishing a recorded session: one identity per fragment (``session_end.py``), then the trajectory files.

Every run ends here (``tracking.py`` calls :func:`finish_session`), and so does ``toxrt finish
SESSION`` (:func:`finish_recorded_session`). A session whose ``toxrt track`` was killed (``kill -9``,
a crash, a power cut, a second Ctrl+C) has its recording on disk up to the last flush but no
trajectories, or only some of them; session.json then says ``complete: false``. Finishing it does
what the end of a normal run does over the recorded fragments, then marks the session complete. It
holds the session's lock meanwhile, so it refuses a session that a live process is still recording.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import __version__
from .config import Config, build_config
from .errors import ConfigError, SessionError
from .io.atomic import TMP_SUFFIX, write_text_atomic
from .io.layout import BLOBS_DIR, PARAMETERS_TOML, SESSION_JSON, TRAJECTORIES_DIR
from .io.session_lock import SessionLock
from .io.session_reader import load_session
from .io.trajectory_files import idtrackerai_session_fields, write_trajectories
from .session_end import decide_identities, save_fragment_identities
from .trajectories import assemble

log = logging.getLogger(__name__)


def finish_recorded_session(folder: str | Path) -> dict:
    """Fuse and write the trajectories of a recorded session folder; returns the summary.

    Raises SessionError (one line) for a folder that is not a session or is being recorded.
    """
    folder = Path(folder)
    if not (folder / SESSION_JSON).is_file():
        raise SessionError(f"{folder}: not a session folder (missing {SESSION_JSON})")
    with SessionLock(folder):
        session = load_session(folder)
        try:
            config = build_config(session.parameters)
        except ConfigError as exc:
            raise SessionError(f"{folder / PARAMETERS_TOML}: {exc}") from None
        number_of_animals = int(session.meta.get("number_of_animals") or 0)
        if number_of_animals < 1:
            raise SessionError(f"{folder / SESSION_JSON}: no number_of_animals; cannot finish the session")
        if not session.meta.get("recording_complete"):
            log.warning("%s: the recording was cut short at frame %d; finishing what was recorded",
                        folder, session.n_frames)
        return finish_session(folder, config, number_of_animals,
                              extra={"session": str(folder), "frames": int(session.n_frames),
                                     "finished_by": "toxrt finish"})


def finish_session(folder: Path, config: Config, number_of_animals: int, extra: dict | None = None) -> dict:
    """One identity per recorded fragment (``session_end``), then the trajectory files.

    session.json says ``complete: false`` until every output is written (a kill in between leaves
    a session that ``toxrt finish`` completes); temporary files of an earlier, killed attempt go.
    ``extra`` entries are added to the summary stored in session.json.
    """
    update_meta(folder, complete=False)
    remove_temporary_files(folder)
    session = load_session(folder)
    decision = decide_identities(session, config, number_of_animals)
    save_fragment_identities(folder, decision)
    fused = decision.identities
    out = assemble(
        session.blobs, fused, session.n_frames, number_of_animals,
        max_crossing_gap=max(1, int(round(2 * session.meta.get("frames_per_second", 25)))),
    )
    meta = dict(session.meta)
    meta.update(body_length=session.meta.get("body_length_px"), version=__version__, source="toxrt-live")
    individual = session.fragments[~session.fragments["is_crossing"]]
    identified = ~np.isnan(out.trajectories[..., 0])
    confidence = out.id_probabilities[..., 0][identified]
    summary = {
        "number_of_animals": number_of_animals,
        "fragments": int(individual.size),
        "crossing_fragments": int(session.fragments.size - individual.size),
        "fragments_identified": int(sum(1 for f in individual["fragment"] if int(f) in fused)),
        "fraction_identified": float(identified.mean()) if identified.size else 0.0,
        "mean_identity_probability": float(np.nanmean(confidence)) if np.isfinite(confidence).any() else float("nan"),
        **decision.quality(),
        **(extra or {}),
    }
    # quality measures of the identity stage (estimated_accuracy, ...) go into the files from the summary
    try:
        written = write_trajectories(folder / TRAJECTORIES_DIR, out.trajectories, out.id_probabilities, out.status,
                                     meta, config.trajectories_formats, areas=out.areas, quality=summary)
    except OSError as exc:  # a full disk: the recording is whole, only the outputs are missing
        raise SessionError(f"{folder / TRAJECTORIES_DIR}: cannot write the trajectories: {exc.strerror or exc}; "
                           f"make room and run `toxrt finish {folder}`") from None
    summary["outputs"] = [str(p) for p in written]
    store_summary(folder, summary, idtrackerai_session_fields(folder, session.meta, session.n_frames,
                                                               number_of_animals))
    return summary


def store_summary(folder: Path, summary: dict, fields: dict | None = None) -> None:
    """The summary (and ``fields``) into session.json, which then says ``complete: true``."""
    update_meta(folder, **(fields or {}), summary=summary, complete=True)


def update_meta(folder: Path, **fields) -> None:
    """Merge ``fields`` into session.json (rewritten atomically)."""
    path = folder / SESSION_JSON
    meta = json.loads(path.read_text())
    meta.update(fields)
    write_text_atomic(path, json.dumps(meta, indent=2, default=str))


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the ``*.tmp`` files a killed writer left in a session folder (never data: every file is
    renamed into place only once whole). Call it only while holding the folder's SessionLock."""
    folder = Path(folder)
    pattern = f"*{TMP_SUFFIX}"
    candidates = [*folder.glob(pattern), *(folder / BLOBS_DIR).glob(pattern), *(folder / TRAJECTORIES_DIR).rglob(pattern)]
    removed = [p for p in candidates if p.is_file()]  # offline/ is refine's, which takes no lock
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("removed %d temporary files left by an interrupted run in %s", len(removed), folder)
    return removed
