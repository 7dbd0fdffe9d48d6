"""``toxrt finish SESSION``: finish a session from what was recorded.

A session whose ``toxrt track`` was killed (``kill -9``, a crash, a power cut, a second Ctrl+C) has
its recording on disk up to the last flush but no trajectories, or only some of them; session.json
then says ``complete: false``. Finishing runs the same end-of-session fusion as a normal run over
the recorded fragments and writes the trajectory files, then marks the session complete. It holds
the session's lock meanwhile, so it refuses a session that a live process is still recording.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .config import build_config
from .errors import ConfigError, SessionError
from .tracking import finish_session
from .io.session_lock import SessionLock
from .io.session_reader import load_session

log = logging.getLogger(__name__)


def finish_recorded_session(folder: str | Path) -> dict:
    """Fuse and write the trajectories of a recorded session folder; returns the summary.

    Raises SessionError (one line) for a folder that is not a session or is being recorded.
    """
    folder = Path(folder)
    if not (folder / "session.json").is_file():
        raise SessionError(f"{folder}: not a session folder (missing session.json)")
    with SessionLock(folder):
        session = load_session(folder)
        try:
            config = build_config(session.parameters)
        except ConfigError as exc:
            raise SessionError(f"{folder / 'parameters.toml'}: {exc}") from None
        number_of_animals = int(session.meta.get("number_of_animals") or 0)
        if number_of_animals < 1:
            raise SessionError(f"{folder / 'session.json'}: no number_of_animals; cannot finish the session")
        if not session.meta.get("recording_complete"):
            log.warning("%s: the recording was cut short at frame %d; finishing what was recorded",
                        folder, session.n_frames)
        return finish_session(folder, config, number_of_animals,
                              extra={"session": str(folder), "frames": int(session.n_frames),
                                     "finished_by": "toxrt finish"})
