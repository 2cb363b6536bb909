"""What ``minilora exercise list | get | grade`` does (``minilora/cli.py`` parses the arguments)."""
from __future__ import annotations

import pathlib
import shlex
import sys

from . import spec, write_skeleton
from .specs import NAMES


def list_exercises() -> int:
    """Print every exercise's name and its one line."""
    width = max(map(len, NAMES))
    print(f"{'exercise':<{width}}  what you write")
    for name in NAMES:
        print(f"{name:<{width}}  {spec(name).SUMMARY}")
    print("\nget one:  minilora exercise get NAME [--dir DIR]      (guide: docs/exercises.md)")
    return 0


def get(name: str, directory: str = ".", force: bool = False) -> int:
    """Write the skeleton of ``name`` (or of every exercise, ``name = "all"``) into ``directory``.

    An existing file is never replaced without ``force``: exit status 1 and a message saying so.
    """
    status = 0
    for n in NAMES if name == "all" else (name,):
        try:
            path = write_skeleton(n, directory, force=force)
        except FileExistsError as exc:
            path = pathlib.Path(exc.args[0])
            print(f"minilora exercise get: {path} exists already; not overwritten (it may hold your "
                  f"work). Grade it with `minilora exercise grade {shlex.quote(str(path))}`, write "
                  f"elsewhere with --dir, or start again from the skeleton with --force.", file=sys.stderr)
            status = 1
            continue
        print(f"wrote {path}: write {spec(n).BACKWARD} in it, then run "
              f"`minilora exercise grade {shlex.quote(str(path))}`")
    return status


def target_path(target: str, directory: str | None) -> pathlib.Path:
    """The file ``grade TARGET`` means: TARGET itself when it names a file (or ends in .py), else
    the exercise TARGET's file ``DIR/TARGET.py`` (DIR default: the current directory)."""
    if directory is None and (target.endswith(".py") or pathlib.Path(target).is_file()):
        return pathlib.Path(target)
    return pathlib.Path(directory or ".") / (target if target.endswith(".py") else f"{target}.py")


def grade(path: pathlib.Path, name: str | None = None) -> int:
    """Grade the file ``path`` and print the report; 0 when every gradient passes, else 1."""
    from . import grader

    report = grader.grade(path, name)
    print(report.text())
    return report.status
