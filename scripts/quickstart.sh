#!/usr/bin/env bash
# From a fresh clone to a running training job: install dependencies, fetch the GPT-2 tokenizer
# files, build, tokenize the built-in corpus (the King James Bible from Debian's bible-kjv) and
# train the tiny config (on the GPU if one is present, else on the CPU).
# Extra arguments are config overrides, e.g.: scripts/quickstart.sh --steps 50 --optimizer muon
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/install_deps.sh
scripts/get_tokenizer.sh
scripts/build.sh
scripts/get_corpus.sh
if ! ls data/kjv/kjv_train_*.bin >/dev/null 2>&1; then
  build/orthogpt tokenize --input data/kjv/kjv.txt --output-dir data/kjv --prefix kjv --val-fraction 0.02
fi
exec build/orthogpt train --config configs/tiny.yaml "$@"
