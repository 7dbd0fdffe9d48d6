"""Errors that reach the user as one line, without a traceback."""


class ToxrtError(Exception):
    """A problem the user can fix; the CLI prints its message and exits non-zero."""


class ConfigError(ToxrtError):
    """A parameter file or flag is malformed, unknown, or out of range."""


class SourceError(ToxrtError):
    """A video, image sequence or stream cannot be opened or read."""


class SessionError(ToxrtError):
    """A session folder is missing, incomplete, or of an unknown format."""
