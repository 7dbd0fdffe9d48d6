"""Packaging: the default parameters ship in the package, optional dependencies fail clearly, the
demo writes nothing git tracks. (tools/check_wheel.sh installs the wheel in a clean venv.)"""
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from toxrt.config import Config, build_config, config_to_dict

from .helpers import toxrt

ROOT = Path(__file__).resolve().parents[1]


def test_config_defaults_prints_the_shipped_file():
    result = toxrt("config", "--defaults")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "toxrt" / "default.toml").read_text()
    assert build_config(tomllib.loads(result.stdout)) == Config()
    assert tomllib.loads(result.stdout) == config_to_dict(Config())


def test_track_help_points_to_the_defaults():
    result = toxrt("track", "--help")
    assert result.returncode == 0 and "toxrt config --defaults" in " ".join(result.stdout.split())


def test_the_wheel_holds_the_default_parameters(tmp_path):
    source = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT / "toxrt", source / "toxrt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("toxrt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "toxrt/default.toml" in names and not any(n.startswith(("tests/", "demo_output/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    hard = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any(name in line for line in hard for name in ("filterpy", "motmetrics", "matplotlib", "pandas"))


# Runs a toxrt command in a process where the named modules cannot be imported.
WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import raises ImportError
from toxrt.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("missing, command, message", [
    ("motmetrics", ["evaluate", "{session}", "{csv}"], "IDF1 and MOTA needs motmetrics: pip install 'toxrt[eval]'"),
    ("trajectorytools", ["stats", "{session}", "--out", "{tmp}"],
     "statistics (toxrt stats, toxrt report) needs trajectorytools: pip install 'toxrt[report]'"),
    ("matplotlib", ["report", "{session}", "--out", "{tmp}/r.html"], "toxrt report needs matplotlib: pip install 'toxrt[report]'"),
])
def test_missing_extras_give_one_clear_line(video_session, tmp_path, missing, command, message):
    args = [a.format(session=video_session["session"], csv=video_session["csv"], tmp=tmp_path) for a in command]
    result = subprocess.run([sys.executable, "-c", WITHOUT, missing, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"toxrt: error: {message}"


def test_demo_output_is_not_tracked_and_is_ignored():
    tracked = subprocess.run(["git", "ls-files", "demo_output"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert tracked.stdout == ""
    ignored = subprocess.run(["git", "check-ignore", "-q", "demo_output/session_demo/session.json"], cwd=ROOT)
    assert ignored.returncode == 0
