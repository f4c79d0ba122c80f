#!/usr/bin/env bash
# Download the first N pretokenized FineWeb10B GPT-2 shards (100M tokens each) plus the val
# shard — the files the reference's data script (cached_fineweb10B.py) fetches — into
# data/fineweb10B/. Needs network access to huggingface.co (not available in CI or on the
# project's GPU machine). Usage: scripts/get_fineweb.sh 30   (the 160M reference uses 30)
set -euo pipefail
n="${1:?usage: scripts/get_fineweb.sh NUM_TRAIN_SHARDS}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/data/fineweb10B"
base="https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main"
mkdir -p "$dir"
fetch() {
  local f="$1"
  if [ -s "$dir/$f" ]; then echo "have $f"; return; fi
  echo "downloading $f"
  curl -fL --retry 3 -o "$dir/$f.part" "$base/$f"
  mv "$dir/$f.part" "$dir/$f"
}
fetch fineweb_val_000000.bin
for i in $(seq 1 "$n"); do fetch "$(printf 'fineweb_train_%06d.bin' "$i")"; done
echo "FineWeb shards in $dir"
