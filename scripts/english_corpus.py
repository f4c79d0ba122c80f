#!/usr/bin/env python3
"""Plain English text out of installed Debian packages, for scripts/get_corpus_large.sh.

  english_corpus.py extract SOURCE OUT.jsonl   one source -> JSONL, one {"text": ...} per document
  english_corpus.py mix OUT.jsonl IN.jsonl...  interleave the documents of all sources in a fixed
                                               pseudo-random order (seed 1234), so every stretch of
                                               the train shards and the evenly spread val documents
                                               mix all sources instead of one source after another

Sources (documents; what is stripped):
  gcide    dict-gcide: one dictionary entry per document, read through the dictd index; source
           tags ([1913 Webster]), pronunciation (\\Af*fect"\\), cross-reference braces and accent
           codes ([=a]) removed, wrapped lines joined into paragraphs
  foldoc   dict-foldoc: one entry per document; braces, date stamps and bare URL lines removed
  jargon   dict-jargon: one entry per document; as foldoc
  kjv      bible-kjv: one chapter per document (data/kjv/kjv.txt from scripts/get_corpus.sh)
  python   python3-doc (python3.X-doc): one Info node per document (the docs as Texinfo Info text); node
           headers, menus, index nodes and cross-reference markup removed
  perl     perl-doc: one pod page per document (pod2text, unwrapped); the perlNNNdelta change
           logs and the perluniprops table left out
  man      manpages + manpages-dev: one man page per document (groff -mandoc -Tutf8, unwrapped,
           no hyphenation, bold/underline removed); page header/footer lines removed
  debref   debian-reference-en: one chapter (HTML file) per document, HTML to text (DocBook
           navigation bars and tables of contents left out)
  pgdoc    postgresql-doc (postgresql-doc-NN): one page (HTML file) of the PostgreSQL manual per document
  gnustd   gnu-standards: one manual (HTML file) per document, HTML to text
JSONL keeps paragraph breaks inside a document (a blank-line-separated text file could not).
"""
import base64
import glob
import gzip
import html.parser
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys

# ---- dictd databases (index: headword TAB offset TAB length, numbers in dictd's base64) ----
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64num(s):
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def dictd_entries(name):
    """Raw entry texts of /usr/share/dictd/NAME.{index,dict.dz}, each once, in file order."""
    data = gzip.open(f"/usr/share/dictd/{name}.dict.dz").read()
    spans = set()
    with open(f"/usr/share/dictd/{name}.index", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
                continue
            spans.add((_b64num(parts[1]), _b64num(parts[2])))
    for off, ln in sorted(spans):
        yield data[off:off + ln].decode("utf-8", errors="replace")


def unwrap(text):
    """Join wrapped lines: paragraphs (separated by blank lines) become single lines."""
    paras = []
    for p in re.split(r"\n\s*\n", text):
        line = " ".join(l.strip() for l in p.split("\n") if l.strip())
        line = re.sub(r"  +", " ", line)
        if line:
            paras.append(line)
    return "\n".join(paras)


def clean_gcide(e):
    e = re.sub(r"\[1913 Webster\] [^\s\[\]]+\s*$", "", e)  # a few entries end with the next headword
    e = re.sub(r"^\s*\[[^\]\n]{1,60}\]\s*$", "", e, flags=re.M)  # a line that is only a source tag
    e = re.sub(r"\[(1913 Webster|WordNet 1\.5|PJC|Webster 1913 Suppl\.|Century Dict\.|RHUD|MW10|AS|NetMW)\]", "", e)
    e = re.sub(r"\\[^\\\n]{0,80}\\,?", "", e)  # pronunciation \Af*fect"\
    e = re.sub(r"\[[=^`'\"~.,]?([A-Za-z]{1,2})[=^`'\"~.,]?\]", r"\1", e)  # accent codes [=a] ['e]
    e = e.replace("{", "").replace("}", "")
    return unwrap(e)


def clean_foldoc_like(e):
    e = re.sub(r"^\s*\(\d{4}-\d{2}-\d{2}\)\s*$", "", e, flags=re.M)  # date stamp
    e = re.sub(r"^\s*\{?\(?(https?|ftp|news|mailto|telnet):[^\s]*\s*$", "", e, flags=re.M)  # bare URL line
    e = e.replace("{", "").replace("}", "")
    return unwrap(e)


def src_dict(name, clean):
    for e in dictd_entries(name):
        t = clean(e)
        if len(t) >= 20:
            yield t


# ---- KJV: chapters separated by blank lines (scripts/get_corpus.sh) ----
def src_kjv(path):
    with open(path, encoding="utf-8") as f:
        for ch in f.read().split("\n\n"):
            if ch.strip():
                yield ch.strip()


# ---- Python docs as Info ----
def src_python():
    infos = sorted(glob.glob("/usr/share/info/python3.*.info.gz"))
    if not infos:
        return
    raw = gzip.open(infos[-1]).read().decode("utf-8", errors="replace")
    for node in raw.split("\x1f")[1:]:
        lines = node.lstrip("\n").split("\n")
        m = re.match(r"File: [^,]+,\s+Node: ([^,\n]+)", lines[0]) if lines else None
        if not m:
            continue  # tag table, indirect table
        name = m.group(1)
        if "Index" in name or name == "Top":
            continue
        body = []
        for l in lines[1:]:
            if l.startswith("* Menu:"):
                break  # menus close a node
            body.append(l)
        t = "\n".join(body)
        t = re.sub(r"\*[Nn]ote[ \n]+([^:]+?)::", r"\1", t)
        t = re.sub(r"\*[Nn]ote[ \n]+([^:]+?):[ \n]+[^.,]*[.,]", r"\1", t)
        t = re.sub(r"\n{3,}", "\n\n", t).strip()
        if len(t) >= 200:
            yield t


# ---- perl pods ----
def _pod_text(path):
    r = subprocess.run(["pod2text", "--width=100000", "--indent=0", "--loose", path], capture_output=True)
    return r.stdout.decode("utf-8", errors="replace")


def src_perl():
    pods = sorted(p for p in glob.glob("/usr/share/perl/*/pod/*.pod") 
                  if not re.search(r"(delta|perluniprops)\.pod$", p))
    with multiprocessing.Pool(2) as pool:
        for t in pool.imap(_pod_text, pods):
            t = re.sub(r"\n{3,}", "\n\n", t).strip()
            if len(t) >= 200:
                yield t


# ---- man pages ----
def _man_text(path):
    src = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    if src.lstrip().startswith(b".so ") and src.count(b"\n") <= 2:
        return ""  # a link to another page
    r = subprocess.run(["groff", "-mandoc", "-Tutf8", "-P-cbou", "-rLL=20000n", "-rHY=0", "-dAD=l", "-rcR=1"],
                       input=src, capture_output=True, env=dict(os.environ, LC_ALL="C.UTF-8"))
    lines = r.stdout.decode("utf-8", errors="replace").split("\n")
    nonblank = [i for i, l in enumerate(lines) if l.strip()]
    if len(nonblank) < 3:
        return ""
    body = lines[nonblank[0] + 1:nonblank[-1]]  # drop the page header and footer lines
    body = [re.sub(r"^ {1,7}", "", l).rstrip() for l in body]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip()


def src_man():
    files = []
    for pkg in ("manpages", "manpages-dev"):
        out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout
        files += [p for p in out.split("\n") if re.search(r"/man/man\d/[^/]+$", p) and os.path.isfile(p)
                  and not os.path.islink(p)]
    with multiprocessing.Pool(2) as pool:
        for t in pool.imap(_man_text, sorted(set(files)), chunksize=8):
            if len(t) >= 200:
                yield t


# ---- HTML manuals ----
class _HtmlText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table",
             "blockquote", "section", "ul", "ol", "dl", "hr", "title"}
    SKIP = {"script", "style", "head"}

    # DocBook navigation bars and tables of contents are not text
    SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip, self.pre = [], 0, 0
        self.div_depth = 0
        self.skip_div_at = []  # div depths where a skipped block started

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            self.div_depth += 1
            classes = set((dict(attrs).get("class") or "").split())
            if classes & self.SKIP_CLASSES:
                self.skip_div_at.append(self.div_depth)
                self.skip += 1
        if tag in self.SKIP:
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_endtag(self, tag):
        if tag == "div":
            if self.skip_div_at and self.skip_div_at[-1] == self.div_depth:
                self.skip_div_at.pop()
                self.skip = max(0, self.skip - 1)
            self.div_depth = max(0, self.div_depth - 1)
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_data(self, data):
        if self.skip:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self):
        t = "".join(self.out)
        t = "\n".join(l.rstrip() if l.startswith("  ") else l.strip() for l in t.split("\n"))  # keep <pre> indents
        return re.sub(r"\n{3,}", "\n\n", t).strip()


def html_text(path):
    p = _HtmlText()
    p.feed(open(path, encoding="utf-8", errors="replace").read())
    return p.text()


def src_html(paths):
    for path in paths:
        t = html_text(path)
        if len(t) >= 200:
            yield t


SOURCES = {
    "gcide": lambda: src_dict("gcide", clean_gcide),
    "foldoc": lambda: src_dict("foldoc", clean_foldoc_like),
    "jargon": lambda: src_dict("jargon", clean_foldoc_like),
    "python": src_python,
    "perl": src_perl,
    "man": src_man,
    "debref": lambda: src_html(sorted(glob.glob("/usr/share/debian-reference/*.en.html"))),
    "pgdoc": lambda: src_html(sorted(glob.glob("/usr/share/doc/postgresql-doc-*/html/*.html"))),
    "gnustd": lambda: src_html(["/usr/share/doc/gnu-standards/standards.html",
                                "/usr/share/doc/gnu-standards/maintain.html"]),
}


def write_jsonl(docs, out):
    n = size = 0
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
            n += 1
            size += len(d.encode("utf-8"))
    os.replace(tmp, out)
    return n, size


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "extract":
        name, out = sys.argv[2], sys.argv[3]
        if name.startswith("kjv="):
            docs = src_kjv(name[4:])
        elif name in SOURCES:
            docs = SOURCES[name]()
        else:
            sys.exit(f"english_corpus.py: unknown source '{name}' (known: kjv=PATH {' '.join(SOURCES)})")
        n, size = write_jsonl(docs, out)
        if n == 0:
            sys.exit(f"english_corpus.py: source {name} gave no documents (package missing or format changed?)")
        print(f"{n} {size}")
    elif len(sys.argv) >= 4 and sys.argv[1] == "mix":
        lines = []
        for path in sys.argv[3:]:
            with open(path, encoding="utf-8") as f:
                lines += [l for l in f if l.strip()]
        random.Random(1234).shuffle(lines)
        tmp = sys.argv[2] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, sys.argv[2])
        print(len(lines))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
