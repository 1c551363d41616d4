#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install dependencies, build,
# generate a small Llama-shaped base + 3 experts, start `mergeserve serve` on
# its embedded defaults (SQLite + local disk), and drive a TIES merge through
# `mergectl`: register, merge, download. Then the data-aware part on the
# digits zoo (real data): experts with programs and tasks, datasets, a TIES
# sweep, a Fisher merge computed by the server and evaluated. Prints every
# step.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$JOBS" --target mergeserve mergectl
DEMO=${DEMO_DIR:-build/demo}
rm -rf "$DEMO"
mkdir -p "$DEMO"
DEMO=$(cd "$DEMO" && pwd)
/usr/bin/python3 tests/tools/make_model.py "$DEMO/models" --hidden 256 --layers 4 \
  --intermediate 688 --vocab 8000 --experts 3 --shards 2
/usr/bin/python3 tests/tools/make_zoo.py "$DEMO/zoo" >/dev/null

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS=$(free_port)
export MERGESERVE_ADDR=127.0.0.1:$PORT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

build/mergeserve serve --listen "$MERGESERVE_ADDR" --metrics-listen "127.0.0.1:$METRICS" \
  --data-dir "$DEMO/data" --allow-root "$DEMO/models" --allow-root "$DEMO/zoo" \
  2>"$DEMO/server.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  build/mergectl list >/dev/null 2>&1 && break
  sleep 0.1
done
echo "mergeserve serving on $MERGESERVE_ADDR (metrics on :$METRICS, data in $DEMO/data)"

step build/mergectl register llama-base "$DEMO/models/base" --role base --label family=demo
step build/mergectl register math "$DEMO/models/expert0" --base llama-base --label task=math
step build/mergectl register code "$DEMO/models/expert1" --base llama-base --label task=code
# A client without shared storage uploads instead (SHA-256 checked).
step build/mergectl register chat "$DEMO/models/expert2" --base llama-base --upload
step build/mergectl list
cat > "$DEMO/ties.yaml" <<'YAML'
merge_method: ties
base_model: llama-base
models:
  - model: math
    parameters: {weight: 1.0, density: 0.2}
  - model: code
    parameters: {weight: 1.0, density: 0.2}
  - model: chat
    parameters: {weight: 0.5, density: 0.3}
parameters: {normalize: true, lambda: 1.0}
YAML
echo; echo "--- $DEMO/ties.yaml"; cat "$DEMO/ties.yaml"
step build/mergectl merge "$DEMO/ties.yaml" --output "$DEMO/merged"
step build/mergectl jobs
step ls -l "$DEMO/merged"
echo; echo "--- a few metrics from http://127.0.0.1:$METRICS/metrics"
/usr/bin/python3 - "$METRICS" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
for line in text.splitlines():
    if line.startswith(("mergeserve_rpc_requests_total", "mergeserve_job_duration_seconds_count",
                        "mergeserve_bytes_streamed_total", "mergeserve_cache_")):
        print(line)
PY
echo; echo "--- server log (JSON lines)"; tail -n 4 "$DEMO/server.log"

echo; echo "=== data-aware merging on the digits zoo ($DEMO/zoo)"
Z="$DEMO/zoo"
step build/mergectl register digits "$Z/base" --role base
for t in parity high mod3 mirror; do
  # program.pt in the folder is attached; --task names what it solves.
  build/mergectl register "$t" "$Z/$t" --base digits --task "$t" >/dev/null
  for split in eval:eval val:validation fisher:fisher aux:auxiliary; do
    build/mergectl dataset "${t}_${split%%:*}" "$Z/data/${t}_${split%%:*}.safetensors" \
      --task "$t" --role "${split##*:}" >/dev/null
  done
done
step build/mergectl datasets --task mod3
step build/mergectl eval digits
cat > "$DEMO/zoo_ties.yaml" <<'YAML'
merge_method: ties
base_model: digits
models: [{model: parity}, {model: high}, {model: mod3}, {model: mirror}]
YAML
step build/mergectl sweep "$DEMO/zoo_ties.yaml" --lambda 0.4,0.6,0.8,1.0 --density 0.2,0.5
cat > "$DEMO/zoo_fisher.yaml" <<'YAML'
merge_method: fisher
base_model: digits
parameters: {normalize: true, fisher_mode: exact, examples: 256}
models: [{model: parity}, {model: high}, {model: mod3}, {model: mirror}]
YAML
step build/mergectl merge "$DEMO/zoo_fisher.yaml" --eval
step build/mergectl analyze "$DEMO/zoo_ties.yaml" --plot "$DEMO/zoo_ties.png"
