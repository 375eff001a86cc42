"""The documentation points at things that exist: README.md and every page under docs/.

For every Markdown page: each relative link or image target resolves to a file or folder, and each
fenced code block names only experiment files, `python -m` modules and `python` scripts that are in
the repository. Pure Python, no network.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])  # docs/results/<experiment>/ too
GENERATED = re.compile(r"_(table|comparisons|factors)\.md$")  # written by `python -m analysis`, not by hand

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n(.*?)^ {0,3}\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) or ![alt](target), the target optionally in <...> and followed by a "title"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", re.M)  # [label]: target
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...

EXPERIMENT = re.compile(r"(?<![\w-])experiments/([\w.-]+?)\.toml\b")
MODULE = re.compile(r"\bpython(?:3(?:\.\d+)?)?\s+-m\s+([A-Za-z_][\w.]*)")
SCRIPT = re.compile(r"\bpython(?:3(?:\.\d+)?)?\s+((?:[\w.-]+/)*[\w.-]+\.py)\b")


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _split(text: str) -> tuple[str, list[str]]:
    """The page's prose (fenced blocks and inline code blanked out) and its fenced code blocks."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    prose = FENCE.sub("\n", text)
    prose = INLINE_CODE.sub(lambda m: "`" + " " * (len(m.group(0)) - 2) + "`", prose)
    return prose, blocks


def _targets(prose: str) -> list[str]:
    found = [m.group(1) for m in LINK.finditer(prose)] + [m.group(1) for m in REFERENCE.finditer(prose)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def _module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
            or (path / "__main__.py").is_file())


def test_pages_found():
    assert (ROOT / "README.md") in PAGES
    assert len(PAGES) > 1, "no pages under docs/"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_resolve(page: Path):
    prose, _ = _split(page.read_text(encoding="utf-8"))
    broken = []
    for target in _targets(prose):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{_page_id(page)}: broken link target(s): {', '.join(broken)}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_code_blocks_name_existing_files(page: Path):
    _, blocks = _split(page.read_text(encoding="utf-8"))
    top_level = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing = []
    for block in blocks:
        for name in EXPERIMENT.findall(block):
            if not (ROOT / "experiments" / f"{name}.toml").is_file():
                missing.append(f"experiments/{name}.toml")
        for module in MODULE.findall(block):
            module = module.rstrip(".")
            if module.split(".")[0] in top_level and not _module_exists(module):
                missing.append(f"python -m {module}")
        for script in SCRIPT.findall(block):
            if not (ROOT / script).is_file():
                missing.append(f"python {script}")
    assert not missing, f"{_page_id(page)}: code blocks name what is not in the repository: {', '.join(missing)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower-case, punctuation dropped (not - or _), spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    prose = FENCE.sub("\n", page.read_text(encoding="utf-8"))  # headings keep their inline code
    anchors: set[str] = set()
    for heading in re.findall(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", prose, re.M):
        slug, n = _slug(heading), 0
        while (slug if n == 0 else f"{slug}-{n}") in anchors:
            n += 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_anchors_resolve(page: Path):
    """#fragment in a link to a Markdown page names one of that page's headings."""
    prose, _ = _split(page.read_text(encoding="utf-8"))
    broken = []
    for target in _targets(prose):
        if EXTERNAL.match(target) or "#" not in target:
            continue
        path, fragment = target.split("#", 1)
        linked = (page.parent / path) if path else page
        if linked.suffix == ".md" and linked.is_file() and fragment not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{_page_id(page)}: link(s) to a heading that does not exist: {', '.join(broken)}"


def test_readme_links_every_page():
    prose, _ = _split((ROOT / "README.md").read_text(encoding="utf-8"))
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in _targets(prose) if not EXTERNAL.match(t)}
    unlinked = [_page_id(p) for p in PAGES
                if p.parent.name == "docs" and not GENERATED.search(p.name) and p.resolve() not in linked]
    assert not unlinked, f"README.md: pages not in its documentation list: {', '.join(unlinked)}"


# Written with character classes, so that this file does not match itself.
PROCESS_WORDS = re.compile(r"\bissues? #?\d+|\bstop \d+\b|\blent[ ]machine|\bmoon[s]hot|the issue[']s|"
                           r"\bprevious[ ]session|METHOD[.]md", re.I)


def test_the_repository_speaks_to_a_stranger():
    """No internal issue or stop numbers or words for how the work is organised (a dated fact carries its
    date instead), and no citation of the design card kept outside the repository."""
    root = Path(__file__).resolve().parents[1]
    files = []
    for folder, subfolders, names in os.walk(root):  # pruned as it goes: .venv alone holds tens of thousands
        subfolders[:] = [name for name in subfolders if name not in {".venv", "runs", ".git", "figures"}]
        files += [Path(folder, name) for name in names if name.endswith((".md", ".py", ".toml"))]
    found = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if PROCESS_WORDS.search(line)]
    assert not found, "\n".join(found)


def test_architecture_names_every_module():
    """docs/architecture.md is the map of the code: a module added without a line there fails here."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p for package in ("study", "analysis") for p in (ROOT / package).rglob("*.py")
               if p.name != "__init__.py"]
    assert modules and not [str(p.relative_to(ROOT)) for p in modules if p.name not in page]


# A repository path named in an experiment header, a code comment or a docstring: docs/x.md, study/y.py, ...
NAMED_PATH = re.compile(r"(?<![\w/.-])((?:docs|experiments|benchmarks|study|analysis|tests|\.ci)/[\w./-]*\w)")
SOURCES = sorted([*(ROOT / "experiments").glob("*.toml"), *(ROOT / "benchmarks").glob("*.py"),
                  *(ROOT / "study").rglob("*.py"), *(ROOT / "analysis").rglob("*.py"), ROOT / "sweep.py"])


def test_every_path_named_in_experiments_and_code_exists():
    """Experiment headers and code comments point at files a reader can open (not at a copy kept
    elsewhere, nor at a page since renamed)."""
    missing = []
    for source in SOURCES:
        for line_number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            for path in NAMED_PATH.findall(line):
                if "<" in line or "{" in path or "*" in line:
                    continue  # a pattern (figures/<experiment>/, {name}.md), not a file
                if not (ROOT / path).exists() and not (ROOT / path.split("#")[0]).exists():
                    missing.append(f"{source.relative_to(ROOT)}:{line_number}: {path}")
    assert not missing, "\n".join(missing)


def test_every_table_published_from_a_results_bundle_is_what_the_bundle_gives():
    from analysis.doc_tables import stale_blocks
    assert not [line for page in PAGES for line in stale_blocks(page)]


def test_the_readme_figure_is_what_its_bundle_draws(tmp_path):
    """The README's figure, regenerated from its results bundle, is the same bytes (as python -m analysis
    --from results/prune_to_bar.json.gz draws from_dense_extra_epochs.png)."""
    from analysis import from_dense, provenance
    from analysis.bundle import read_bundle
    from analysis.plotting import save, style
    figure = ROOT / "docs/results/prune_to_bar/prune_to_bar_extra_epochs.png"
    assert f"]({figure.relative_to(ROOT).as_posix()})" in (ROOT / "README.md").read_text()
    inputs = read_bundle(ROOT / "results/prune_to_bar.json.gz")
    frame = inputs.trials.frame
    with style():
        fig = from_dense.extra_epochs_figure(frame, inputs.errors)
        save(fig, tmp_path / "figure", provenance.card(inputs.runs, frame["run_id"]))
    assert (tmp_path / "figure.png").read_bytes() == figure.read_bytes()
