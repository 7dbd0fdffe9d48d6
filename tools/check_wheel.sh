#!/usr/bin/env bash
# Build toxrt's wheel, install it in a clean venv outside the repository, and run what a newcomer
# runs: toxrt demo, then a video from simulation to report (simulate, track, report, video, stats).
# Usage: bash tools/check_wheel.sh [PYTHON]   (prints "wheel check passed" at the end)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-$(command -v python3.11 || command -v python3)}"
work="$(mktemp -d /tmp/toxrt-wheel-XXXXXX)"
trap 'rm -rf "$work"' EXIT
before="$(git -C "$repo" status --porcelain 2>/dev/null || true)"

"$python" -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install -q --upgrade pip build
# sdist first, then the wheel from it (in a temporary folder: nothing is built inside the checkout)
"$work/build-env/bin/python" -m build --outdir "$work/dist" "$repo" >/dev/null
wheel="$(ls "$work"/dist/toxrt-*.whl)"
echo "built $(basename "$wheel")"

"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "${wheel}[report]"
toxrt="$work/venv/bin/toxrt"
cd "$work"  # nothing below may touch the repository
"$toxrt" config --defaults > params_defaults.toml
"$toxrt" demo --animals 4 --frames 200 --quiet
test -f demo_output/session_demo/trajectories/trajectories.npy
"$toxrt" simulate arena --animals 4 --frames 200 --quiet
"$toxrt" track --load arena/params.toml --quiet --streaming.publish_address "" --streaming.marker_address ""
"$toxrt" report arena/session_simulation
"$toxrt" video arena/session_simulation --end 50 --quiet
"$toxrt" stats arena/session_simulation > /dev/null
test -s arena/session_simulation/report.html
test -s arena/session_simulation/videos/simulation_tracked.webm
test -s arena/session_simulation/stats/per_animal.csv
after="$(git -C "$repo" status --porcelain 2>/dev/null || true)"
if [ "$before" != "$after" ]; then
  echo "the wheel check changed files in the repository:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "wheel check passed"
