"""The session folder on disk: ``layout`` (where it is, its file names), ``atomic`` (files replaced
atomically), ``session_lock`` (one process per folder), ``recording`` (the writer), ``session_reader``
(the loader) and ``trajectory_files`` (trajectories in idtracker.ai's layout).
"""
