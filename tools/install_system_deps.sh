#!/usr/bin/env bash
# System packages the test suite exercises:
# - ffmpeg streams a video over UDP to the live source;
# - Node.js with the zeromq package from npm is a non-Python subscriber of the JSON stream
#   (tests/clients/subscriber.mjs parses every message with the strict JSON.parse);
# - chromium (headless) opens the HTML report and plays the overlay videos.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
can_apt() { [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v ffmpeg >/dev/null 2>&1; then
  if can_apt; then
    echo "installing ffmpeg (apt-get)" >&2
    apt_install ffmpeg
  else
    echo "warning: ffmpeg is not installed and cannot be installed here; the UDP stream test will be skipped (it fails under CI=true)" >&2
  fi
fi

if ! command -v chromium >/dev/null 2>&1; then
  if can_apt; then
    echo "installing chromium (apt-get)" >&2
    apt_install chromium
  else
    echo "warning: chromium is not installed and cannot be installed here; the report and video browser tests will be skipped (they fail under CI=true)" >&2
  fi
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if can_apt; then
    echo "installing Node.js and npm (apt-get)" >&2
    apt_install nodejs npm
  else
    echo "warning: Node.js/npm are not installed and cannot be installed here; the Node subscriber test will be skipped (it fails under CI=true)" >&2
  fi
fi
if command -v npm >/dev/null 2>&1 && [ ! -d "$ROOT/tests/clients/node_modules/zeromq" ]; then
  echo "installing the zeromq npm package for tests/clients" >&2
  # The package ships prebuilt binaries; no lock file is kept (the version is pinned in package.json).
  (cd "$ROOT/tests/clients" && npm install --no-package-lock --no-audit --no-fund --loglevel=error >/dev/null)
fi
