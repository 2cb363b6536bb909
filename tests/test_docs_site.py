"""The documentation site's sources: every page and notebook is in mkdocs.yml's nav, every nav
entry exists, and the vendored KaTeX has every file its CSS and the config load (no network).

The build itself (``mkdocs build --strict`` with the network off) and the headless-browser check
(``scripts/check_docs_site.py``) run in CI (.ci/run), where the ``docs`` extra is installed.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG = (ROOT / "mkdocs.yml").read_text()


def nav_entries():
    nav = CONFIG.split("\nnav:\n", 1)[1]
    return re.findall(r":\s*([\w./-]+\.(?:md|ipynb))\s*$", nav, flags=re.M)


def test_every_nav_entry_exists():
    entries = nav_entries()
    assert len(entries) > 10
    missing = [e for e in entries if not (DOCS / e).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"


def test_every_page_and_notebook_is_in_the_nav():
    entries = set(nav_entries())
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")
             if "assets" not in p.parts and "notebooks" not in p.parts}
    notebooks = {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    left_out = sorted((pages | notebooks) - entries)
    assert not left_out, f"not in mkdocs.yml's nav (add them, so the site shows them): {left_out}"


def test_docs_notebooks_is_the_notebooks_folder():
    link = DOCS / "notebooks"
    assert link.is_symlink() and link.resolve() == (ROOT / "notebooks").resolve()


def test_the_vendored_katex_has_what_the_site_loads():
    for rel in re.findall(r"^\s*-\s*(assets/[\w./-]+\.(?:js|css))\s*$", CONFIG, flags=re.M):
        assert (DOCS / rel).is_file(), f"mkdocs.yml loads {rel}, which is not in docs/"
    css = (DOCS / "assets/katex/katex.min.css").read_text()
    woff2 = set(re.findall(r"url\((fonts/[\w-]+\.woff2)\)", css))
    assert len(woff2) >= 20
    missing = [f for f in woff2 if not (DOCS / "assets/katex" / f).is_file()]
    assert not missing, f"KaTeX's CSS needs fonts that are not vendored: {missing}"


def test_the_site_loads_nothing_from_the_network():
    assert re.search(r"^\s*font:\s*false", CONFIG, flags=re.M), "Material would load Google Fonts"
    for rel in re.findall(r"^\s*-\s*(assets/[\w./-]+\.(?:js|css))\s*$", CONFIG, flags=re.M):
        assert "http" not in rel
    init = (DOCS / "assets/katex-init.js").read_text()
    assert "renderMathInElement" in init and "http" not in init
