"""The ``minilora`` command: argument parsing only; the work lives in ``minilora.experiments``.

    minilora demo [mlp|gpt|adapters] [--quick] [--seed N] [--device cpu|cuda]
    minilora gradcheck [--full]
"""
from __future__ import annotations

import argparse
import importlib
import sys

DEMOS = {
    "mlp": "minilora.experiments.mlp_demo",  # digits: base, rotated domain, LoRA vs full FT
    "gpt": "minilora.experiments.gpt_demo",  # tiny GPT: English prose -> Python source
    "adapters": "minilora.experiments.task_switch",  # two adapters on one base, saved and swapped
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="minilora", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"minilora {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a demo and print its report")
    d.add_argument("which", nargs="?", default="mlp", choices=sorted(DEMOS), help="which demo (default: mlp)")
    d.add_argument("--quick", action="store_true", help="tiny sizes, seconds (used by the tests)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")

    g = sub.add_parser("gradcheck", help="finite-difference check of every backward (and PyTorch when installed)")
    g.add_argument("--full", action="store_true", help="larger shapes (slower)")
    g.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from . import backend

        try:  # fail before any work, with the install hint and no traceback
            backend.resolve_device(args.device)
        except (RuntimeError, ValueError) as e:
            print(f"minilora: {e}", file=sys.stderr)
            return 2
        module = importlib.import_module(DEMOS[args.which])
        module.run(quick=args.quick, seed=args.seed, device=args.device, progress=not args.no_progress)
        return 0
    if args.command == "gradcheck":
        module = importlib.import_module("minilora.experiments.gradcheck_report")
        return module.main(full=args.full, torch=not args.no_torch)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
