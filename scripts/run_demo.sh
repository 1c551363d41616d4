#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install dependencies, build,
# generate a small Llama-shaped base + 3 experts, run a one-shot TIES merge
# and show what it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$JOBS" --target mergeserve
DEMO=${DEMO_DIR:-build/demo}
rm -rf "$DEMO"
/usr/bin/python3 tests/tools/make_model.py "$DEMO/models" --hidden 256 --layers 4 \
  --intermediate 688 --vocab 8000 --experts 3 --shards 2
echo "--- config ($DEMO/models/ties.yaml)"
cat "$DEMO/models/ties.yaml"
echo "--- mergeserve merge"
build/mergeserve merge "$DEMO/models/ties.yaml" "$DEMO/merged" --shard-size 8MB
echo "--- output folder"
ls -l "$DEMO/merged"
