"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks:``).

The pages in docs/ link to the code as it sits in the repository (``../minilora/nn/lora.py``),
which is right on GitHub and in an editor. The site holds only docs/, so such a link is
rewritten: a notebook to its rendered page (docs/notebooks is a link to ../notebooks), anything
else to its path as code text — the reader sees where the code is, and strict mode still fails
on every link that points at nothing.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    page_dir = posixpath.dirname(page.file.src_uri)  # inside docs/

    def rewrite(m):
        text, target, anchor = m.group(1), m.group(2), m.group(3) or ""
        in_repo = posixpath.normpath(posixpath.join("docs", page_dir, target))
        if in_repo.startswith("docs/"):
            return m.group(0)  # a page of the site: mkdocs checks it
        if not (ROOT / in_repo).exists():
            return m.group(0)  # left alone, so that strict mode reports it
        if in_repo.startswith("notebooks/") and in_repo.endswith(".ipynb"):
            rel = posixpath.relpath(posixpath.join("docs", in_repo), posixpath.join("docs", page_dir))
            return f"[{text}]({rel}{anchor})"
        label = text if text.strip("`") == in_repo else f"{text} (`{in_repo}`)"
        return label

    return LINK.sub(rewrite, markdown)
