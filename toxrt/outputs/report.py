"""One self-contained HTML page about a tracked session (``toxrt report SESSION``).

Everything is inside the file (PNG figures as data URIs, CSS inline): it can be mailed, archived
or opened from any folder. Sections: summary, quality measures and warnings, trajectories over the
arena, the fragment and identity timeline with crossings, identity probability over time, speed
distributions, and the per-animal statistics of ``toxrt stats``.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path

import cv2
import numpy as np

from .. import __version__
from ..config import Config
from ..io.atomic import write_text_atomic
from ..io.layout import OFFLINE_DIR
from . import report_figures as figures
from .results import Results
from .stats import compute, per_animal, settings_text

REPORT_NAME = "report.html"
LOW_FRACTION_IDENTIFIED = 0.9
LOW_ACCURACY = 0.95

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 24px; color: #1d2430; background: #fafbfc; }
h1 { margin-bottom: 0; } .sub { color: #5b6472; margin-top: 4px; }
h2 { border-bottom: 1px solid #d8dde4; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; font-size: 14px; } td, th { padding: 4px 10px; border-bottom: 1px solid #e6e9ee; text-align: right; }
th { background: #eef1f5; } td:first-child, th:first-child { text-align: left; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: white; border: 1px solid #d8dde4; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card .value { font-size: 26px; font-weight: 600; } .card .label { color: #5b6472; font-size: 13px; }
.good { color: #1b7f3b; } .bad { color: #b3261e; } .none { color: #8a93a0; }
.warnings { background: #fff4e5; border: 1px solid #f0b76a; border-radius: 8px; padding: 8px 16px; }
.ok { background: #eaf6ee; border: 1px solid #9bd3ad; border-radius: 8px; padding: 8px 16px; }
img { max-width: 100%; background: white; border: 1px solid #d8dde4; border-radius: 6px; }
.note { color: #5b6472; font-size: 13px; } .scroll { overflow-x: auto; }
"""


def _fmt(value, digits: int = 3, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{100 * value:.1f}%" if percent else f"{value:.{digits}g}"
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="note">nothing to show</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(row.get(c), 4)}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _by_identity(rows: list[dict]) -> str:
    """Per-animal rows turned around: one line per measure, one column per identity."""
    if not rows:
        return '<p class="note">nothing to show</p>'
    turned = [{"measure": key, **{f"id {row['identity']}": row[key] for row in rows}}
              for key in rows[0] if key != "identity"]
    return f'<div class="scroll">{_table(turned)}</div>'


def quality(results: Results) -> tuple[dict, list[str]]:
    """Quality measures (from the identity stage where it gave them, else from the trajectories)
    and the warnings to show."""
    summary, data = results.summary, results.data

    def first(*keys):
        for source in (data, summary):  # the trajectory file's own values first: it may be refined
            for key in keys:
                value = source.get(key)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    return float(value)
        return None

    known = np.isfinite(results.trajectories[..., 0])
    measures = {
        "estimated accuracy": first("estimated_accuracy"),
        "fraction identified": float(known.mean()) if known.size else None,
        "fragment connectivity": first("fragment_connectivity"),
        "silhouette score": first("silhouette_score"),
        "mean identity probability": first("mean_identity_probability"),
    }
    warnings = [str(w) for w in summary.get("warnings") or []]
    refined = results.folder / OFFLINE_DIR / "refine_summary.json"
    if data.get("source") == "toxrt-refined" and refined.exists():
        warnings += [f"refinement: {w}" for w in json.loads(refined.read_text()).get("warnings") or []]
    if measures["fraction identified"] is not None and measures["fraction identified"] < LOW_FRACTION_IDENTIFIED:
        warnings.append(f"only {100 * measures['fraction identified']:.1f}% of animal-frames have a position")
    if measures["estimated accuracy"] is not None and measures["estimated accuracy"] < LOW_ACCURACY:
        warnings.append(f"estimated accuracy {measures['estimated accuracy']:.3f} is below {LOW_ACCURACY}")
    if summary.get("stopped_early_at") is not None:
        warnings.append(f"the video broke off at frame {summary['stopped_early_at']}")
    if summary.get("frame_errors"):
        warnings.append(f"{summary['frame_errors']} frames failed and were skipped")
    if summary.get("frames_dropped"):
        warnings.append(f"{summary['frames_dropped']} frames were dropped by the live source")
    if summary.get("interrupted"):
        warnings.append("tracking was stopped before the end of the source")
    for j, label in enumerate(results.labels):
        if not known[:, j].any():
            warnings.append(f"identity {label} never has a position")
    return measures, warnings


def arena_image(results: Results, config: Config) -> np.ndarray | None:
    """The background model, else the first tracked frame."""
    path = results.folder / "background.png"
    background = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.exists() else None
    if background is not None:
        return background
    from .video import source_frames

    return next(iter(source_frames(results, config, 0, 1)), None)


def _card(label: str, value, good: bool | None, percent: bool = True) -> str:
    css = "none" if value is None else ("good" if good else "bad" if good is not None else "")
    return (f'<div class="card"><div class="value {css}">{_fmt(value, 3, percent)}</div>'
            f'<div class="label">{html.escape(label)}</div></div>')


def build_report(results: Results, config: Config) -> str:
    """The HTML text of the report."""
    measures, warnings = quality(results)
    kinematics = compute(results, config.stats)
    rows = per_animal(results, kinematics)
    summary = results.summary
    name = results.folder.name.removeprefix("session_")
    duration = results.n_frames / results.fps
    cards = "".join([
        _card("estimated accuracy", measures["estimated accuracy"],
              None if measures["estimated accuracy"] is None else measures["estimated accuracy"] >= LOW_ACCURACY),
        _card("fraction identified", measures["fraction identified"],
              None if measures["fraction identified"] is None else measures["fraction identified"] >= LOW_FRACTION_IDENTIFIED),
        _card("fragment connectivity", measures["fragment connectivity"], None, percent=False),
        _card("silhouette score", measures["silhouette score"], None, percent=False),
        _card("mean identity probability", measures["mean identity probability"], None, percent=False),
    ])
    warning_html = ('<div class="warnings"><b>Warnings</b><ul>' + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
                    + "</ul></div>") if warnings else '<div class="ok">No warnings.</div>'
    info = [
        {"": "session", "value": str(results.folder)},
        {"": "video", "value": ", ".join(results.video_paths) or "—"},
        {"": "frames", "value": f"{results.n_frames} at {results.fps:g} fps ({duration:.1f} s)"},
        {"": "animals", "value": str(results.n_animals)},
        {"": "body length", "value": f"{results.body_length_px:.1f} px"},
        {"": "calibration", "value": f"{results.length_unit:g} px/cm" if results.length_unit else "none (pixels)"},
        {"": "trajectories", "value": str(results.data.get("source", "idtracker.ai layout"))},
    ]
    details = [{"": key, "value": _fmt(value)} for key, value in summary.items()
               if key not in ("outputs", "warnings", "session") and not isinstance(value, (dict, list))]
    parts = [
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>toxrt report: {html.escape(name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>toxrt report: {html.escape(name)}</h1>",
        f'<p class="sub">{results.n_animals} animals, {results.n_frames} frames, {duration:.1f} s. '
        f"Made {datetime.datetime.now():%Y-%m-%d %H:%M} by toxrt {__version__}.</p>",
        '<h2 id="quality">Quality</h2>', f'<div class="cards">{cards}</div><p></p>', warning_html,
        '<h2 id="session">Session</h2>', _table(info, ["", "value"]),
        '<h2 id="trajectories">Trajectories over the arena</h2>',
        _img(figures.trajectories_over_arena(results, arena_image(results, config)), "trajectories"),
        '<h2 id="timeline">Fragments, identities and crossings</h2>',
        _img(figures.identity_timeline(results), "identity timeline"),
        '<h2 id="probability">Identity probability over time</h2>',
        _img(figures.probability_over_time(results), "identity probability"),
        '<h2 id="speed">Speed distributions</h2>', _img(figures.speed_distributions(results, kinematics), "speeds"),
        '<h2 id="statistics">Statistics per animal</h2>', _by_identity(rows),
        f'<p class="note">{html.escape(settings_text(results, config.stats))}</p>',
        '<h2 id="summary">Tracking summary</h2>', _table(details, ["", "value"]),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(results: Results, config: Config, path: Path | None = None) -> Path:
    path = Path(path) if path else results.folder / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, build_report(results, config))
