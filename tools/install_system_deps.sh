#!/usr/bin/env bash
# System packages the test suite exercises: ffmpeg streams a video over UDP to the live source.
set -euo pipefail
if command -v ffmpeg >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ffmpeg (apt-get)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
else
  echo "warning: ffmpeg is not installed and cannot be installed here; the UDP stream test will be skipped (it fails under CI=true)" >&2
fi
