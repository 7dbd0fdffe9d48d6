#!/usr/bin/env bash
# System packages the test suite exercises: ffmpeg streams a video over UDP to the live source;
# chromium (headless) opens the HTML report and plays the overlay videos.
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: ${missing[*]} not installed and cannot be installed here; the tests that need them are" \
       "skipped (they fail under CI=true)" >&2
fi
