#!/usr/bin/env bash
# Prepare the git-ignored folders a GPU-machine run carries (the device has no network):
#   .third_party/pcre2/include/pcre2.h  (its image has the PCRE2 runtime but no header)
#   assets/gpt2                         (tokenizer files, via scripts/get_tokenizer.sh)
# Run here before a device call that names .third_party and assets in `carry`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -f .third_party/pcre2/include/pcre2.h ]; then
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download libpcre2-dev >/dev/null)
  dpkg -x "$tmp"/libpcre2-dev_*.deb "$tmp/x"
  mkdir -p .third_party/pcre2/include
  cp "$tmp"/x/usr/include/pcre2.h .third_party/pcre2/include/
  rm -rf "$tmp"
fi
[ -x scripts/get_tokenizer.sh ] && scripts/get_tokenizer.sh || true
echo "device deps ready: .third_party/pcre2 $(du -sh .third_party | cut -f1)"
