"""Regions of interest: ``roi_list`` entries (idtracker.ai's syntax) read and drawn as a mask.

Entries are applied in order: ``"+ Shape ..."`` adds the shape, ``"- Shape ..."`` removes it.
Shapes: ``Polygon [[x, y], ...]``, ``Rectangle [[x0, y0], [x1, y1]]`` (corners, inclusive) and
``Ellipse {'center': [x, y], 'axes': [a, b], 'angle': deg}`` (semi-axes, degrees). The config checks
every entry on load (:func:`parse_roi_entry`); segmentation and ``toxrt stats`` draw the masks.
"""
from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence

import cv2
import numpy as np

from .errors import ConfigError

_ROI_PATTERN = re.compile(r"^\s*([+-])\s*(Polygon|Ellipse|Rectangle)\s*(.+?)\s*$", re.DOTALL)
_ROI_SHIFT = 4  # fractional bits of the fixed-point vertices given to cv2.fillPoly
_ELLIPSE_VERTICES = 180
ROI_MAX_COORDINATE = 100_000  # pixels; far beyond any frame, small enough for fillPoly's fixed point


def _roi_shape_vertices(kind: str, data: object) -> np.ndarray:
    """float64 (k, 2) x, y polygon vertices of one ROI shape; raises ValueError/TypeError/KeyError."""
    if kind == "Ellipse":
        if not isinstance(data, dict):
            raise TypeError("expected {'center': [x, y], 'axes': [a, b], 'angle': deg}")
        cx, cy = (float(v) for v in data["center"])
        a, b = (float(v) for v in data["axes"])  # semi-axes, as cv2.ellipse
        if a < 0 or b < 0:
            raise ValueError("negative axes")
        phi = math.radians(float(data.get("angle", 0.0)))  # from +x towards +y, as cv2.ellipse
        t = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
        x, y = a * np.cos(t), b * np.sin(t)
        points = np.column_stack((cx + x * math.cos(phi) - y * math.sin(phi),
                                  cy + x * math.sin(phi) + y * math.cos(phi)))
    else:
        points = np.asarray(data, np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError("expected a list of [x, y] points")
        if kind == "Rectangle":
            if points.shape[0] != 2:
                raise ValueError("expected two corners [[x0, y0], [x1, y1]]")
            (x0, y0), (x1, y1) = points
            points = np.array(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
        elif points.shape[0] < 3:
            raise ValueError("a polygon needs at least 3 points")
    if not np.all(np.isfinite(points)):
        raise ValueError("non-finite coordinates")
    if np.abs(points).max() > ROI_MAX_COORDINATE:
        raise ValueError(f"coordinates must be within +-{ROI_MAX_COORDINATE} pixels")
    return points


def parse_roi_entry(entry: object) -> tuple[str, np.ndarray]:
    """``("+" or "-", float64 (k, 2) polygon vertices)`` of one ``roi_list`` entry; ValueError if malformed."""
    match = _ROI_PATTERN.match(entry) if isinstance(entry, str) else None
    try:
        if match is None:
            raise ValueError("expected '+ Polygon [...]', '- Ellipse {...}' or '+ Rectangle [...]'")
        sign, kind, body = match.groups()
        return sign, _roi_shape_vertices(kind, ast.literal_eval(body))
    except (ValueError, TypeError, KeyError, SyntaxError, RecursionError, MemoryError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None


def roi_mask_from_list(roi_list: Sequence[str], height: int, width: int) -> np.ndarray | None:
    """uint8 (height, width) mask, 255 inside the region of interest; None for an empty list.

    Entries are applied in order: ``"+ Shape ..."`` adds the shape, ``"- Shape ..."`` removes
    it; when the first entry removes, the region starts as the whole frame. Shapes:
    ``Polygon [[x, y], ...]``, ``Rectangle [[x0, y0], [x1, y1]]`` (corners, inclusive) and
    ``Ellipse {'center': [x, y], 'axes': [a, b], 'angle': deg}`` (semi-axes, degrees).
    """
    if not roi_list:
        return None
    first_removes = roi_list[0].lstrip().startswith("-")
    mask = np.full((height, width), 255 if first_removes else 0, np.uint8)
    for i, entry in enumerate(roi_list):
        try:
            sign, vertices = parse_roi_entry(entry)
        except ValueError as exc:
            raise ConfigError(f"roi_list[{i}]: cannot read {entry!r} ({exc})") from None
        fixed = np.rint(vertices * (1 << _ROI_SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, (fixed,), 255 if sign == "+" else 0, cv2.LINE_8, _ROI_SHIFT)
    return mask
