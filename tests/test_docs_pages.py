"""The pages that make claims about the code: docs/to_peft.md's script runs and both directions
agree, docs/conventions.md names only things that exist (and lists the PEFT fields minilora really
writes and refuses), and every link from one page of docs/ to another resolves.

The script test is marked ``crosscheck`` and skipped, with the install commands, when PyTorch,
PEFT or scikit-learn is missing. It runs the page's one Python block in a subprocess whose working
directory is a temporary one, so nothing is written into the repository.
"""
import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minilora
from minilora import safetensors as st
from minilora.adapters import files

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HINT = ("install `pip install torch==2.13.0` (CPU build) first, then "
        "`pip install -e '.[crosscheck,demo]'` (PEFT, safetensors, scikit-learn)")


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def python_block(name: str) -> str:
    blocks = page(name).split("```python\n")[1:]
    assert len(blocks) == 1, f"docs/{name} should hold exactly one Python block: the script"
    return blocks[0].split("```", 1)[0]


def prose(text: str) -> str:
    """The page without its fenced code blocks (their contents are code, not claims in prose)."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.S | re.M)


def spans(text: str) -> list:
    """Every inline code span of the prose, in order."""
    return re.findall(r"`([^`\n]+)`", prose(text))


# ----------------------------------------------------------------------------- docs/to_peft.md


def test_to_peft_script_uses_the_public_api_in_both_directions():
    tree = ast.parse(python_block("to_peft.md"))
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in modules} <= {"itertools", "time", "numpy", "peft", "torch", "minilora"}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module.startswith("minilora"):
            assert all(not a.name.startswith("_") for a in n.names), ast.dump(n)
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
              for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, (ast.Attribute, ast.Name))}
    for name in ("save_adapter", "torch_twin", "from_pretrained", "save_pretrained", "load_adapter"):
        assert name in called, name


MISSING = [name for name in ("torch", "peft", "sklearn") if importlib.util.find_spec(name) is None]


@pytest.mark.crosscheck
@pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed: {HINT}")
def test_to_peft_script_runs_and_both_directions_agree(tmp_path):
    script = tmp_path / "to_peft.py"
    script.write_text(python_block("to_peft.md"), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # the script asserts its tolerance itself; here the printed numbers are read back as well
    for direction in ("minilora -> PEFT", "PEFT -> minilora"):
        m = re.search(rf"{direction}: max \|logit difference\| (\S+) \(largest \|logit\| (\S+);", out)
        assert m, out
        diff, largest = float(m[1]), float(m[2].rstrip(";"))
        assert 0 <= diff <= 1e-5 * largest, m[0]
    assert "fingerprint: absent" in out and "['default', 'peft']" in out, out
    cfg = json.loads((tmp_path / "rotated_adapter" / files.CONFIG_NAME).read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (4, 8, ["fc1", "fc2"])
    for d in ("rotated_adapter", "rotated_peft"):
        assert (tmp_path / d / files.WEIGHTS_NAME).is_file()
        assert not (ROOT / d).exists()  # written in the temporary directory only
    print(f"docs/to_peft.md script: {seconds:.1f} s")


# ----------------------------------------------------------------------------- docs/conventions.md


def _metadata_keys(tmp_path) -> set:
    """The ``__metadata__`` keys save_adapter writes (``minilora.base_sha256`` and the like are
    metadata, not attributes of the package)."""
    model = minilora.MLP((4, 5, 3), seed=0).add_lora(["fc1"], r=2, alpha=4)
    minilora.save_adapter(model, tmp_path / "a")
    return set(st.read_header(tmp_path / "a" / files.WEIGHTS_NAME)[1])


def _resolve(dotted: str):
    """``minilora.a.b.name`` → the object: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] != "minilora":
                raise  # torch or peft missing: the caller decides
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _needs_torch(dotted: str) -> bool:
    return dotted.startswith(("minilora.torch_twin", "ml.torch_twin")) and (
        importlib.util.find_spec("torch") is None or importlib.util.find_spec("peft") is None)


@pytest.mark.parametrize("name", ["conventions.md", "to_peft.md"])
def test_minilora_names_in_the_pages_exist(name, tmp_path):
    text = page(name)
    metadata = _metadata_keys(tmp_path)
    functional = importlib.import_module("minilora.functional")
    classes = _classes()
    checked = 0
    for span in spans(text):
        m = re.fullmatch(r"((?:minilora|ml)(?:\.\w+)+)(\(.*\))?", span)
        if m and m[1] not in metadata and not _needs_torch(m[1]):
            dotted = re.sub(r"^ml\.", "minilora.", m[1])
            try:
                _resolve(dotted)
            except (ImportError, AttributeError) as e:
                pytest.fail(f"docs/{name}: `{span}` does not exist ({e})")
            checked += 1
        m = re.fullmatch(r"(\w+_(?:forward|backward))(\(.*\))?", span)
        if m:  # a pair of minilora.functional, or a method such as Module.plan_backward
            assert hasattr(functional, m[1]) or any(hasattr(c, m[1]) for c in classes.values()), (
                f"docs/{name}: `{span}` is neither a pair in minilora.functional nor a method")
            checked += 1
    assert checked >= 5


def _classes() -> dict:
    """Every class defined in minilora, by name."""
    import pkgutil

    out = {}
    for info in pkgutil.walk_packages(minilora.__path__, "minilora."):
        if info.name in ("minilora.torch_twin", "minilora.__main__") or ".experiments" in info.name:
            continue
        mod = importlib.import_module(info.name)
        for k, v in vars(mod).items():
            if inspect.isclass(v) and v.__module__.startswith("minilora"):
                out.setdefault(k, v)
    return out


def _has_attribute(cls, attr: str) -> bool:
    """A class attribute, a NamedTuple/dataclass field, a property, or ``self.attr`` assigned in
    the class or one of its minilora bases."""
    if hasattr(cls, attr):
        return True
    for base in cls.__mro__:
        if base.__module__.startswith("minilora") and re.search(rf"self\.{attr}\b\s*(?:[,=:)]|$)",
                                                                inspect.getsource(base), re.M):
            return True
    return False


def test_conventions_class_attributes_exist():
    classes = _classes()
    seen = 0
    for span in spans(page("conventions.md")):
        m = re.fullmatch(r"([A-Z]\w*)\.(\w+)(\(.*\))?", span)
        if m and m[1] in classes:  # other heads are PyTorch's or PEFT's
            assert _has_attribute(classes[m[1]], m[2]), f"docs/conventions.md: `{span}`: no attribute {m[2]!r}"
            seen += 1
    assert seen >= 10


def test_conventions_quoted_constants_have_their_values():
    found = re.findall(r"`(minilora(?:\.\w+)+)` = ([0-9][0-9.e+-]*)", page("conventions.md"))
    assert len(found) >= 4, found
    for dotted, value in found:
        assert _resolve(dotted) == float(value), f"{dotted} is {_resolve(dotted)}, the page says {value}"


def _letters_table_code_tokens() -> set:
    section = page("conventions.md").split("## Letters and shapes", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in section.splitlines() if l.startswith("|") and not l.startswith("|---")]
    cells = [r.strip("|").split(" | ")[-1] for r in rows[1:]]
    return {t for c in cells for s in re.findall(r"`([^`]+)`", c) for t in re.findall(r"[A-Za-z_]\w*", s)}


def test_every_axis_letter_of_the_code_is_in_the_letters_table():
    axes = set()
    for sub in ("functional", "nn", "fast"):
        for f in (ROOT / "minilora" / sub).glob("*.py"):
            for shape in re.findall(r"# \(([^)]*)\)", f.read_text(encoding="utf-8")):
                axes |= {re.sub(r"^\d+", "", t) for t in re.findall(r"\w+", shape)}
    axes.discard("")
    assert {"B", "T", "C", "H", "hd", "N", "V", "r", "d_in", "d_out"} <= axes  # the scan works
    missing = axes - _letters_table_code_tokens()
    assert not missing, f"shape letters used in the code but not in docs/conventions.md's table: {missing}"


def _paragraph(text: str, start: str) -> str:
    return text.split(start, 1)[1].split("\n\n", 1)[0]


def test_conventions_lists_the_config_fields_minilora_writes_and_refuses(tmp_path):
    text = page("conventions.md")
    model = minilora.MLP((4, 5, 3), seed=0).add_lora(["fc1", "fc2"], r={"fc1": 2, "fc2": 3}, alpha=4)
    minilora.save_adapter(model, tmp_path / "a")
    written = set(json.loads((tmp_path / "a" / files.CONFIG_NAME).read_text()))
    listed = {s for s in re.findall(r"`([^`]+)`", _paragraph(text, "**Fields minilora writes**"))
              if re.fullmatch(r"[a-z_]+", s) and s not in ("null", "true", "false") and not hasattr(minilora, s)}
    assert listed == written, f"not on the page: {written - listed}; not written: {listed - written}"
    refused = set(re.findall(r"`([a-z_]+)`", _paragraph(text, "**Fields minilora refuses**")))
    assert set(files.UNSUPPORTED) <= refused, set(files.UNSUPPORTED) - refused
    table = text.split("## PEFT names", 1)[1]
    for key in ("lora_A.weight", "lora_B.weight", "lora_alpha", "target_modules", "use_rslora",
                "rank_pattern", "alpha_pattern"):
        assert key in table, key


# ----------------------------------------------------------------------------- links


LINK = re.compile(r"\]\(([^)\s#]+\.md)(#[^)\s]*)?\)")


def test_every_relative_md_link_in_the_docs_points_to_a_page():
    broken = []
    for md in sorted(DOCS.glob("*.md")):
        for target, _ in LINK.findall(prose(md.read_text(encoding="utf-8"))):
            if not target.startswith(("http://", "https://")) and not (md.parent / target).is_file():
                broken.append(f"{md.name} -> {target}")
    assert broken == []


def test_links_to_a_heading_of_another_page_find_it():
    markdown = pytest.importorskip("markdown", reason="Python-Markdown (the docs extra) computes the heading ids")
    broken, n = [], 0
    for md in sorted(DOCS.glob("*.md")):
        for target, anchor in LINK.findall(prose(md.read_text(encoding="utf-8"))):
            if not anchor or target.startswith(("http://", "https://")):
                continue
            converter = markdown.Markdown(extensions=["toc", "tables"])
            converter.convert((md.parent / target).read_text(encoding="utf-8"))
            ids, stack = set(), list(converter.toc_tokens)
            while stack:
                token = stack.pop()
                ids.add(token["id"])
                stack.extend(token["children"])
            n += 1
            if anchor[1:] not in ids:
                broken.append(f"{md.name} -> {target}{anchor}")
    assert broken == [] and n >= 1
