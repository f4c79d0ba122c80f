#!/usr/bin/env bash
# Build the larger English corpus (~23M GPT-2 tokens) from Debian packages, for the
# reproduction runs (configs/repro/): installs the packages with apt-get, extracts plain text
# (scripts/english_corpus.py: one document per dictionary entry / chapter / manual page / Info
# node / HTML page, markup stripped), interleaves the documents of all sources in a fixed
# pseudo-random order and runs `orthogpt tokenize` to write
#   OUT_DIR/english_train_000000.bin, OUT_DIR/english_val_000000.bin   (val: ~0.5M tokens, a
#     fixed, evenly spread set of documents: tokenize's deterministic val rule on the fixed mix)
#   OUT_DIR/SOURCES.txt   packages, versions, documents, text size and tokens of every source
# and prints the same table. Intermediate files (the JSONL text of each source) go to
# WORK_DIR (default: data/english_src), which a device run does not need.
# Usage: scripts/get_corpus_large.sh [OUT_DIR=data/english]
#   env: ORTHOGPT_BIN (default build/orthogpt), WORK_DIR, VAL_TOKENS (default 500000)
# Reference machine: Debian 12 (bookworm); other releases ship other versions (other counts).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$REPO_ROOT/data/english}"
WORK_DIR="${WORK_DIR:-$REPO_ROOT/data/english_src}"
BIN="${ORTHOGPT_BIN:-$REPO_ROOT/build/orthogpt}"
VAL_TOKENS="${VAL_TOKENS:-500000}"
MAX_SHARD_MB=50  # the shards travel to the GPU machine in a 64 MiB carry

die() { echo "get_corpus_large.sh: error: $*" >&2; exit 1; }
log() { echo "get_corpus_large.sh: $*" >&2; }

[[ -x "$BIN" ]] || die "$BIN not found: build first (scripts/build.sh) or set ORTHOGPT_BIN"

# source name | packages to install | what it is
SOURCES=(
  "gcide|dict-gcide|GNU Collaborative International Dictionary of English (Webster 1913 + WordNet)"
  "foldoc|dict-foldoc|Free On-line Dictionary of Computing"
  "jargon|dict-jargon|Jargon File"
  "kjv|bible-kjv bible-kjv-text|King James Bible"
  "python|python3-doc|Python documentation (Info)"
  "perl|perl-doc|Perl documentation (pod)"
  "man|manpages manpages-dev|Linux man-pages (sections 1-8, rendered with groff)"
  "pgdoc|postgresql-doc|PostgreSQL manual (HTML)"
  "debref|debian-reference-en|Debian Reference (HTML)"
  "gnustd|gnu-standards|GNU Coding Standards and Information for Maintainers (HTML)"
)
TOOLS="python3 groff-base perl"

# ---- packages ------------------------------------------------------------------------------
pkgs="$TOOLS"
for s in "${SOURCES[@]}"; do IFS='|' read -r _ p _ <<<"$s"; pkgs="$pkgs $p"; done
if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
missing=""
for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; done
if [[ -n "$missing" ]]; then
  log "installing:$missing"
  # A fresh machine may have no package lists yet: update once and retry.
  $SUDO apt-get install -y --no-install-recommends $missing >&2 \
    || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends $missing >&2; } \
    || die "apt-get install$missing failed"
fi

# The concrete package behind a metapackage (python3-doc -> python3.11-doc) and its version:
# the owner of a file the extractor reads.
owner_of() { dpkg -S "$1" 2>/dev/null | head -n1 | cut -d: -f1; }
version_of() { dpkg-query -W -f='${Version}' "$1"; }
packages_of() {  # "name=version ..." of the packages a source's text comes from
  local name="$1" list="$2" out="" p
  case "$name" in
    python) list="$(owner_of "$(ls /usr/share/info/python3.*.info.gz | sort | tail -n1)")" ;;
    pgdoc) list="$(owner_of "$(ls -d /usr/share/doc/postgresql-doc-*/html | sort | tail -n1)")" ;;
  esac
  for p in $list; do out="$out $p=$(version_of "$p")"; done
  echo "${out# }"
}

# ---- extract ----------------------------------------------------------------------------------
mkdir -p "$WORK_DIR" "$OUT_DIR" || die "cannot create $WORK_DIR / $OUT_DIR"
bash "$REPO_ROOT/scripts/get_corpus.sh" "$WORK_DIR/kjv.txt" >&2
jsonls=()
for s in "${SOURCES[@]}"; do
  IFS='|' read -r name _ _ <<<"$s"
  arg="$name"; [[ "$name" == kjv ]] && arg="kjv=$WORK_DIR/kjv.txt"
  log "extracting $name ..."
  python3 "$REPO_ROOT/scripts/english_corpus.py" extract "$arg" "$WORK_DIR/$name.jsonl" >/dev/null \
    || die "extracting $name failed"
  jsonls+=("$WORK_DIR/$name.jsonl")
done

# ---- tokens per source (each tokenized alone, no val) -------------------------------------------
declare -A DOCS TOKENS BYTES
total=0
for s in "${SOURCES[@]}"; do
  IFS='|' read -r name _ _ <<<"$s"
  rm -rf "$WORK_DIR/count_$name"
  line="$("$BIN" tokenize --input "$WORK_DIR/$name.jsonl" --output-dir "$WORK_DIR/count_$name" --prefix "$name" \
          --val-fraction 0 --no-progress 2>/dev/null | grep '^tokenized')" || die "tokenizing $name failed"
  rm -rf "$WORK_DIR/count_$name"
  # "tokenized N documents: train N docs / M tokens, ..."
  DOCS[$name]="$(sed -E 's/^tokenized ([0-9]+) documents.*/\1/' <<<"$line")"
  TOKENS[$name]="$(sed -E 's/.*train [0-9]+ docs \/ ([0-9]+) tokens.*/\1/' <<<"$line")"
  BYTES[$name]="$(python3 -c 'import json,sys; print(sum(len(json.loads(l)["text"].encode()) for l in open(sys.argv[1])))' \
                  "$WORK_DIR/$name.jsonl")"
  total=$((total + TOKENS[$name]))
done

# ---- mix and tokenize ----------------------------------------------------------------------------
python3 "$REPO_ROOT/scripts/english_corpus.py" mix "$WORK_DIR/english.jsonl" "${jsonls[@]}" >/dev/null
val_fraction="$(python3 -c "print(f'{min(0.5, $VAL_TOKENS / $total):.6f}')")"
rm -f "$OUT_DIR"/english_train_*.bin "$OUT_DIR"/english_val_*.bin
summary="$("$BIN" tokenize --input "$WORK_DIR/english.jsonl" --output-dir "$OUT_DIR" --prefix english \
            --val-fraction "$val_fraction" --no-progress 2>/dev/null | grep '^tokenized')" || die "tokenizing the mix failed"
shard_bytes="$(cat "$OUT_DIR"/english_*.bin | wc -c)"

# ---- table ------------------------------------------------------------------------------------------
{
  echo "English corpus for configs/repro/ (scripts/get_corpus_large.sh, $(date -u +%Y-%m-%d), $(. /etc/os-release; echo "$PRETTY_NAME"))"
  echo "GPT-2 tokens per source (each source tokenized alone; the shards hold the same documents, mixed):"
  echo
  printf '| %-7s | %-58s | %9s | %8s | %11s | %6s |\n' source "package=version" documents "text MB" "GPT-2 tokens" share
  printf '|%s|%s|%s|%s|%s|%s|\n' --------- "$(printf -- '-%.0s' {1..60})" ----------- ---------- ------------- --------
  for s in "${SOURCES[@]}"; do
    IFS='|' read -r name pkgs what <<<"$s"
    printf '| %-7s | %-58s | %9d | %8.1f | %11d | %5.1f%% |\n' "$name" "$(packages_of "$name" "$pkgs")" "${DOCS[$name]}" \
      "$(python3 -c "print(${BYTES[$name]}/1e6)")" "${TOKENS[$name]}" "$(python3 -c "print(100*${TOKENS[$name]}/$total)")"
  done
  printf '| %-7s | %-58s | %9s | %8s | %11d | %5.1f%% |\n' total "" "" "" "$total" 100
  echo
  echo "Sources:"
  for s in "${SOURCES[@]}"; do IFS='|' read -r name _ what <<<"$s"; echo "  $name: $what"; done
  echo
  echo "Shards ($OUT_DIR, val fraction $val_fraction of the documents, deterministic): $summary"
  echo "Shard bytes: $shard_bytes"
  echo "No source is capped. Extraction rules: scripts/english_corpus.py (docstring)."
} | tee "$OUT_DIR/SOURCES.txt"
(( shard_bytes < MAX_SHARD_MB * 1000000 )) \
  || log "warning: the shards are $shard_bytes bytes, over $MAX_SHARD_MB MB (a 64 MiB device carry may not fit)"
