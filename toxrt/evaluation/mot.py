"""The motmetrics adapter: IDF1, IDP, IDR, MOTA and switches of aligned true and predicted positions."""
from __future__ import annotations

import numpy as np

from ..extras import require


def motmetrics_summary(true: np.ndarray, pred: np.ndarray, frames: np.ndarray, bl2: float) -> dict[str, float]:
    """IDF1, IDP, IDR, MOTA and switches from motmetrics, fed frame by frame."""
    mm = require("motmetrics", "eval", "IDF1 and MOTA")  # pandas-heavy: imported only when evaluating

    acc = mm.MOTAccumulator(auto_id=False)
    true_ok = ~np.isnan(true).any(axis=-1)
    pred_ok = ~np.isnan(pred).any(axis=-1)
    for i, frame in enumerate(frames):
        oids = np.flatnonzero(true_ok[i])
        hids = np.flatnonzero(pred_ok[i])
        delta = true[i, oids][:, None, :] - pred[i, hids][None, :, :]
        d2 = np.einsum("mnk,mnk->mn", delta, delta)
        d2[d2 > bl2] = np.nan  # motmetrics: NaN means "may not pair"
        acc.update(oids.tolist(), (hids + 1).tolist(), d2, frameid=int(frame))
    names = ["idf1", "idp", "idr", "mota", "num_switches"]
    summary = mm.metrics.create().compute(acc, metrics=names, name="eval")
    return {name: float(summary[name].iloc[0]) for name in names}
