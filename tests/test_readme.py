"""The README's promises: its Python examples run as written and its Quick start is what CI runs."""
import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def ten_lines_blocks(readme: str) -> list:
    """The Python blocks of the "Ten lines" section, in order."""
    section = readme.split("## Ten lines", 1)[1].split("\n## ", 1)[0]
    return [b.split("```", 1)[0] for b in section.split("```python")[1:]]


def test_ten_line_example_runs_and_its_gradients_check(capsys):
    block = ten_lines_blocks(README)[0]
    assert len([l for l in block.strip().splitlines() if l.strip()]) <= 11
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert all(r.passed for r in namespace["checks"])
    assert "fc1.lora.default.A" in capsys.readouterr().out


def check_functional_block(block: str) -> None:
    """Run the functional example alone (no names from elsewhere) and hold its results to the
    README's equations: h = x Wᵀ + b + scale (x Aᵀ) Bᵀ; dB = scale doutᵀ u, dA = (scale dout B)ᵀ x,
    dx = dout W + scale (dout B) A."""
    assert "from minilora.functional import lora_forward, lora_backward" in block
    assert "# h = x Wᵀ + b + scale (x Aᵀ) Bᵀ" in block and '# grads = {"A": dA, "B": dB}; never a dW' in block
    assert len([line for line in block.strip().splitlines() if line.strip()]) <= 8  # still short
    ns = {}
    exec(compile(block, "README.md (functional example)", "exec"), ns)  # NameError if not self-contained
    x, W, b, A, B, scale, dh = (ns[k] for k in ("x", "W", "b", "A", "B", "scale", "dh"))
    u = x @ A.T
    np.testing.assert_allclose(ns["h"], x @ W.T + b + scale * u @ B.T, rtol=1e-10)
    grads = ns["grads"]
    assert set(grads) == {"A", "B"}
    np.testing.assert_allclose(grads["B"], scale * dh.T @ u, rtol=1e-10)
    np.testing.assert_allclose(grads["A"], (scale * dh @ B).T @ x, rtol=1e-10)
    np.testing.assert_allclose(ns["dx"], dh @ W + scale * (dh @ B) @ A, rtol=1e-10)
    assert np.abs(grads["A"]).max() > 0  # B is not zero here, so dA is not trivially zero


def test_functional_example_runs_as_written():
    blocks = ten_lines_blocks(README)
    assert len(blocks) == 2, "the Ten lines section has the ten-line example and the functional one"
    check_functional_block(blocks[1])


def test_quickstart_is_two_commands_and_ci_runs_them():
    section = README.split("<!-- quickstart:begin -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]
    commands = [l for l in section.splitlines() if re.match(r"^(python3|\.venv)", l)]
    assert len(commands) == 2
    assert "minilora demo" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "quickstart:begin" in ci and "quickstart:end" in ci


def test_every_relative_link_in_the_docs_exists():
    broken = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if not target.startswith(("http://", "https://")) and not (md.parent / target).exists():
                broken.append(f"{md.name}: {target}")
    assert broken == []
