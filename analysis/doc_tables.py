"""Tables in the documentation written from results bundles, so that a published figure is the one its
bundle gives. A page marks each such table:

    <!-- table from results/default.json.gz: ablation_table -->
    (filled in: the table and its provenance card, as `python -m analysis` writes <name>.md)
    <!-- end of table -->

python -m analysis.doc_tables [PAGE ...]          fill every marked block (default: README.md and every page under docs/)
python -m analysis.doc_tables --check [PAGE ...]  exit 1, naming each block that differs from its bundle
"""
from __future__ import annotations

import argparse
import re
import sys
from functools import cache
from pathlib import Path

from analysis.bundle import Inputs, read_bundle
from analysis.report import table_markdown

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table from (?P<bundle>[\w./-]+\.json\.gz): (?P<table>\w+) -->\n)(?P<body>.*?)(<!-- end of table -->)", re.S)


@cache
def _bundle(path: Path) -> Inputs:
    return read_bundle(path)


def refreshed(page: Path) -> str:
    """The page with every marked block filled from its bundle (paths relative to the repository)."""
    def fill(match: re.Match) -> str:
        inputs = _bundle(ROOT / match["bundle"])
        return match.group(1) + table_markdown(inputs, match["table"]) + match.group(5)
    return BLOCK.sub(fill, page.read_text(encoding="utf-8"))


def stale_blocks(page: Path) -> list[str]:
    """'page: bundle table' for each marked block whose text is not what its bundle gives."""
    text, fresh = page.read_text(encoding="utf-8"), refreshed(page)
    name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    return [f"{name}: {old['bundle']} {old['table']}"
            for old, new in zip(BLOCK.finditer(text), BLOCK.finditer(fresh)) if old["body"] != new["body"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.doc_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    pages = [p.resolve() for p in args.pages] or [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    if args.check:
        stale = [line for page in pages for line in stale_blocks(page)]
        for line in stale:
            print(f"stale: {line} (python -m analysis.doc_tables refreshes it)", file=sys.stderr)
        return 1 if stale else 0
    for page in pages:
        text = refreshed(page)
        if text != page.read_text(encoding="utf-8"):
            page.write_text(text, encoding="utf-8")
            print(f"refreshed {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
