"""toxrt report: one self-contained HTML page, opened in headless Chromium, with a screenshot."""
import json
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tools.headless_chromium import Chromium, find_chromium
from toxrt.outputs.report import write_report
from toxrt.outputs.results import open_session

SECTIONS = ["Quality", "Session", "Trajectories over the arena", "Fragments, identities and crossings",
            "Identity probability over time", "Speed distributions", "Statistics per animal", "Tracking summary"]


@pytest.fixture()
def session(video_session, tmp_path):
    """A copy whose trajectory file and summary carry chosen quality values and a warning."""
    target = tmp_path / "session_simulation"
    shutil.copytree(video_session["session"], target)
    npy = target / "trajectories" / "trajectories.npy"
    data = np.load(npy, allow_pickle=True).item()
    data.update(estimated_accuracy=0.912, fragment_connectivity=0.75)
    np.save(npy, data, allow_pickle=True)
    meta = json.loads((target / "session.json").read_text())
    meta["summary"].update(estimated_accuracy=0.5, warnings=["fragment connectivity 0.75 is low"])
    (target / "session.json").write_text(json.dumps(meta))
    return target


def test_report_is_self_contained_and_shows_the_quality(session):
    results, config = open_session(session)
    text = write_report(results, config).read_text()
    assert (session / "report.html").exists()
    for title in SECTIONS:
        assert f">{title}</h2>" in text
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', text)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:|file:|/)', text)  # nothing outside the file
    assert "91.2%" in text and "fragment connectivity 0.75 is low" in text  # the file's value, not 0.5
    assert "estimated accuracy 0.912 is below 0.95" in text
    assert "8 px/cm" in text and "distance_travelled_cm" in text  # the session is calibrated


@pytest.mark.slow
def test_report_opens_in_chromium(session, tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium is not installed (tools/install_system_deps.sh installs it)")
    result = subprocess.run([sys.executable, "-m", "toxrt", "report", str(session), "--out", str(tmp_path / "r.html")],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    with Chromium() as browser:
        browser.open((tmp_path / "r.html").resolve().as_uri(), width=1280, height=900)
        images = browser.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        headings = browser.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        page_width = browser.evaluate("document.documentElement.scrollWidth")
        shot = browser.screenshot(tmp_path / "report.png", full_page=True)
    assert len(images) == 4 and all(ok and w > 200 and h > 100 for ok, w, h in images)
    assert headings == SECTIONS
    assert page_width <= 1280  # nothing wider than the window
    picture = cv2.imread(str(shot))
    assert picture.shape[1] == 1280 and picture.shape[0] > 2000
    assert picture.std() > 20  # figures and text, not a blank page


def test_many_identities_get_a_heat_map(tmp_path):
    from .helpers import make_session
    from toxrt.outputs.report_figures import MAX_PANELS, probability_over_time

    rng = np.random.default_rng(0)
    n = MAX_PANELS + 4
    trajectories = rng.random((200, n, 2)) * [199, 99]
    session = make_session(tmp_path / "session_many", trajectories)
    results, config = open_session(session)
    picture = cv2.imdecode(np.frombuffer(probability_over_time(results), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[0] < 0.5 * n * 100  # one map, not one 0.9-inch panel per identity
    text = write_report(results, config).read_text()
    assert text.count("<img ") == 4 and f"id {n}" in text
