"""toxrt: real-time multi-animal tracking with live identities.

Quick start::

    from toxrt.config import load_config
    from toxrt.tracking import run_tracking
    summary = run_tracking(load_config("params.toml"))
"""
__version__ = "0.1.0"
