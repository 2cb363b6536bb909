"""The README's promises: its Python example runs and its Quick start is what CI runs."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ten_line_example_runs_and_its_gradients_check(capsys):
    block = README.split("## Ten lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len([l for l in block.strip().splitlines() if l.strip()]) <= 11
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert all(r.passed for r in namespace["checks"])
    assert "fc1.lora.default.A" in capsys.readouterr().out


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
