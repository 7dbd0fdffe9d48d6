"""The fake session of the offline tests (``tests/helpers.py``) is what they need it to be."""
from __future__ import annotations

import numpy as np

from .helpers import make_fake_session


def test_fake_session_has_fragments_crossings_and_scrambled_live_labels():
    s = make_fake_session(seed=1)
    individual = s.fragments[~s.fragments["is_crossing"]]
    assert (individual["n_samples"] < 4).any() and (individual["n_samples"] >= 6).any()
    assert s.fragments["is_crossing"].any()
    wrong = [f for f in individual if f["identity"] != s.truth[int(f["fragment"])]]
    assert 0.05 < len(wrong) / individual.size < 0.4
    assert s.crops(np.array([0, 5])).shape == (2, 20, 20)
