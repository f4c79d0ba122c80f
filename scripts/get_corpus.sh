#!/usr/bin/env bash
# Build the built-in default corpus: the King James Bible (Debian package bible-kjv) as plain
# text in data/kjv/kjv.txt of the repository. One document per chapter; documents are separated
# by one blank line; each document starts with a line naming book and chapter ("Genesis 1"),
# followed by one verse per line with the verse reference ("Ge1:1 ") stripped.
# Idempotent: an existing file with the expected 1189 chapters / 31102 verses is left alone.
# Works from any working directory. Usage: scripts/get_corpus.sh [output.txt]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO_ROOT/data/kjv/kjv.txt}"
EXPECTED_CHAPTERS=1189
EXPECTED_VERSES=31102

die() { echo "get_corpus.sh: error: $*" >&2; exit 1; }

# Counts "chapters verses" of a corpus file in our format: a document header is the first line of
# the file or a line after a blank line; every other non-blank line is a verse.
count_file() {
  awk 'BEGIN { prev_blank = 1; ch = 0; vs = 0 }
       /^$/ { prev_blank = 1; next }
       { if (prev_blank) ch++; else vs++; prev_blank = 0 }
       END { print ch, vs }' "$1"
}

if [[ -f "$OUT" && "$(count_file "$OUT")" == "$EXPECTED_CHAPTERS $EXPECTED_VERSES" ]]; then
  echo "get_corpus.sh: $OUT already present ($EXPECTED_CHAPTERS chapters, $EXPECTED_VERSES verses)"
  exit 0
fi

if ! command -v bible >/dev/null; then
  echo "get_corpus.sh: 'bible' not found; installing the Debian package bible-kjv ..." >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  # A fresh machine may have no package lists yet: update once and retry.
  $SUDO apt-get install -y bible-kjv >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y bible-kjv >&2; } \
    || die "apt-get install -y bible-kjv failed; install the package bible-kjv and re-run"
  command -v bible >/dev/null || die "bible-kjv installed but the 'bible' command is still missing"
fi

mkdir -p "$(dirname "$OUT")" || die "cannot create $(dirname "$OUT")"
TMP="$OUT.tmp.$$"
trap 'rm -f "$TMP"' EXIT

# `bible -f` prints one verse per line: "<Abbrev><chapter>:<verse> <text>". The awk program maps
# the abbreviation to the full book name, starts a new document at every chapter change, and
# fails on any line it does not understand (so a changed output format cannot go unnoticed).
bible -f "Gen1:1-Rev22:21" | awk '
BEGIN {
  n = split("Ge:Genesis Exo:Exodus Lev:Leviticus Num:Numbers Deu:Deuteronomy Josh:Joshua " \
            "Jdgs:Judges Ruth:Ruth 1Sm:1_Samuel 2Sm:2_Samuel 1Ki:1_Kings 2Ki:2_Kings " \
            "1Chr:1_Chronicles 2Chr:2_Chronicles Ezra:Ezra Neh:Nehemiah Est:Esther Job:Job " \
            "Psa:Psalms Prv:Proverbs Eccl:Ecclesiastes SSol:Song_of_Solomon Isa:Isaiah " \
            "Jer:Jeremiah Lam:Lamentations Eze:Ezekiel Dan:Daniel Hos:Hosea Joel:Joel Amos:Amos " \
            "Obad:Obadiah Jonah:Jonah Mic:Micah Nahum:Nahum Hab:Habakkuk Zep:Zephaniah " \
            "Hag:Haggai Zec:Zechariah Mal:Malachi Mat:Matthew Mark:Mark Luke:Luke John:John " \
            "Acts:Acts Rom:Romans 1Cor:1_Corinthians 2Cor:2_Corinthians Gal:Galatians " \
            "Eph:Ephesians Phi:Philippians Col:Colossians 1Th:1_Thessalonians " \
            "2Th:2_Thessalonians 1Tim:1_Timothy 2Tim:2_Timothy Titus:Titus Phmn:Philemon " \
            "Heb:Hebrews Jas:James 1Pet:1_Peter 2Pet:2_Peter 1Jn:1_John 2Jn:2_John 3Jn:3_John " \
            "Jude:Jude Rev:Revelation", pairs, " ")
  for (i = 1; i <= n; i++) {
    split(pairs[i], kv, ":")
    name = kv[2]; gsub("_", " ", name)
    book[kv[1]] = name
  }
  last = ""
}
{
  if (!match($0, /^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ /)) {
    printf "get_corpus.sh: unexpected line %d from bible: %s\n", NR, $0 > "/dev/stderr"; exit 2
  }
  ref = substr($0, 1, RLENGTH - 1); text = substr($0, RLENGTH + 1)
  match(ref, /^[1-3]?[A-Za-z]+/); abbrev = substr(ref, 1, RLENGTH)
  rest = substr(ref, RLENGTH + 1); split(rest, cv, ":")
  if (!(abbrev in book)) {
    printf "get_corpus.sh: unknown book abbreviation \"%s\" on line %d\n", abbrev, NR > "/dev/stderr"; exit 2
  }
  key = abbrev " " cv[1]
  if (key != last) {
    if (last != "") printf "\n"
    printf "%s %s\n", book[abbrev], cv[1]
    last = key
  }
  gsub(/  +/, " ", text)   # the source has stray double spaces between sentences
  printf "%s\n", text
}' > "$TMP" || die "converting the output of 'bible' failed"

counts="$(count_file "$TMP")"
[[ "$counts" == "$EXPECTED_CHAPTERS $EXPECTED_VERSES" ]] \
  || die "expected $EXPECTED_CHAPTERS chapters and $EXPECTED_VERSES verses, got '$counts' (bible-kjv output changed?)"
mv -f "$TMP" "$OUT"
trap - EXIT
echo "get_corpus.sh: wrote $OUT ($EXPECTED_CHAPTERS chapters, $EXPECTED_VERSES verses, $(stat -c %s "$OUT") bytes)"
