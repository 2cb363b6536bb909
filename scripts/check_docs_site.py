"""Open the built documentation site in a real headless browser and check that its math rendered.

    mkdocs build --strict                       # the site, into site/
    python scripts/check_docs_site.py           # index, the transformer page and a notebook
    python scripts/check_docs_site.py --site site --pages index.html lora.html

For every page: Chromium (headless, with every host name made unresolvable, so nothing can come
from the network) loads it from disk, runs its scripts, and dumps the DOM. A page passes when
its math was rendered by KaTeX (``class="katex"`` present, no ``arithmatex`` element left as raw
TeX, no ``katex-error``); a notebook page when it shows its cells and their outputs (the site
was built with ``MINILORA_DOCS_EXECUTE=true``). A screenshot of each page is saved under
``<site>/_browser_check/`` with ``report.txt``. Exit status 0 when every page passes, 1 when one
fails, 2 when no browser is installed (``apt-get install chromium`` on Debian).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEFAULT_PAGES = ("index.html", "lora.html", "transformer.html", "conventions.html", "to_peft.html",
                 "notebooks/02_digits_adaptation.html", "notebooks/05_backward_by_hand.html")
NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND"  # every name fails to resolve


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium(browser: str, profile: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={profile}", NO_NETWORK, "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def check_page(browser: str, page: Path, shots: Path) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as profile:
        done = chromium(browser, profile, "--dump-dom", page.as_uri())
        if done.returncode != 0 or not done.stdout:
            return False, f"browser failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        dom = done.stdout
        shot = shots / (page.stem.replace("/", "_") + ".png")
        chromium(browser, profile, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    math = len(re.findall(r'class="arithmatex"', dom))
    rendered = len(re.findall(r'class="katex"', dom)) + len(re.findall(r'class="katex-display"', dom))
    errors = len(re.findall(r"katex-error", dom))
    unrendered = [m for m in re.findall(r'class="arithmatex">([^<]{0,40})', dom) if "\\(" in m or "\\[" in m]
    if page.parent.name == "notebooks":  # a rendered notebook: its cells, and outputs if executed
        cells = len(re.findall(r'class="[^"]*\bjp-Cell ', dom))
        outputs = len(re.findall(r'class="[^"]*\bjp-OutputArea-output\b', dom))
        images = len(re.findall(r'<img[^>]+src="data:image/png', dom))
        ok = cells > 0 and outputs > 0 and errors == 0 and not unrendered
        what = f"{cells} cells, {outputs} outputs, {images} plots"
    else:
        ok = rendered > 0 and errors == 0 and not unrendered
        what = f"{math} math elements, {rendered} rendered by KaTeX"
    line = (f"{'ok  ' if ok else 'FAIL'} {page.relative_to(page.parents[1]) if page.parent.name == 'notebooks' else page.name}: "
            f"{what}, {errors} KaTeX errors, {len(unrendered)} left as TeX; screenshot {shot.name}"
            + ("" if shot.exists() else " (not written)"))
    return ok, line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site", default="site", help="the built site (default: site)")
    p.add_argument("--pages", nargs="+", default=list(DEFAULT_PAGES), help="pages, relative to the site")
    args = p.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"check_docs_site: no browser found (looked for {', '.join(BROWSERS)}); "
              "install one, e.g. `apt-get install chromium`", file=sys.stderr)
        return 2
    site = Path(args.site).resolve()
    shots = site / "_browser_check"
    shots.mkdir(parents=True, exist_ok=True)
    lines, all_ok = [], True
    for rel in args.pages:
        page = site / rel
        if not page.is_file():
            ok, line = False, f"FAIL {rel}: not in the site ({page})"
        else:
            ok, line = check_page(browser, page, shots)
        all_ok &= ok
        lines.append(line)
        print(line, flush=True)
    (shots / "report.txt").write_text("\n".join(lines) + "\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
