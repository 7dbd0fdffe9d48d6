"""Optional dependencies: import them where they are used, with one clear error when missing.

    report  matplotlib, trajectorytools  (toxrt report, toxrt stats)
    eval    motmetrics                   (toxrt evaluate, the accuracy lines of toxrt demo)
    offline torch                        (toxrt refine)
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ToxrtError


class MissingExtra(ToxrtError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise MissingExtra naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{purpose} needs {module.split('.')[0]}: pip install 'toxrt[{extra}]'") from None
