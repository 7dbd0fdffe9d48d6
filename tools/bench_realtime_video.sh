#!/usr/bin/env bash
# Issue 8's benchmarks in one unattended run (about 25 minutes on an idle 2-core machine; the
# simulated videos are rendered once and cached in the temporary folder). Run it on a quiet machine:
# every figure depends on having both cores. Results: printed, and as JSON in bench_out/.
#   bash tools/bench_realtime_video.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
mkdir -p bench_out
echo "== $(date -u +%FT%TZ) $(uname -n), $(nproc) cores; uptime: $(uptime)"
echo "== file throughput against the two-core limit (tools/bench_decode.py)"
$PY tools/bench_decode.py tools/datasets/flies2_sleap.toml tools/datasets/spiders2_tracktor.toml \
    --simulate 1280x720 --animals 20 --frames 1500 --sweep --json bench_out/decode.json
echo "== capture -> subscriber latency with decoding in the path (tools/bench_latency.py --video sim)"
$PY tools/bench_latency.py --video sim --seconds 10 --json bench_out/latency_video.json
echo "== the same from frames in memory, for comparison (tools/bench_latency.py)"
$PY tools/bench_latency.py --seconds 10 --json bench_out/latency_memory.json
echo "== per-frame cost against the number of animals, 1280x1280 (tools/bench_scale.py)"
$PY tools/bench_scale.py --animals 40 --animals 100 --animals 200 --frames 500 --json bench_out/scale_wall.json
$PY tools/bench_scale.py --animals 40 --animals 100 --animals 200 --frames 500 --clock cpu --json bench_out/scale_cpu.json
echo "== done; uptime: $(uptime)"
