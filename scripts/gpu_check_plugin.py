"""A pytest plugin for scripts/gpu_check.py: one JSON line per test outcome, written as it happens.

    MINILORA_GPU_CHECK_LOG=tests.jsonl python -m pytest -p gpu_check_plugin ...

Each line is ``{"nodeid", "when", "outcome"}`` (plus ``"detail"``: the failure's last lines or the
skip's reason). Written line by line, so a run stopped by a timeout still leaves its counts.
"""
from __future__ import annotations

import json
import os


def _write(record: dict) -> None:
    path = os.environ.get("MINILORA_GPU_CHECK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _detail(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[-1])  # (file, line, "Skipped: reason")
    return str(report.longrepr)[-1500:] if report.longrepr else ""


def pytest_runtest_logreport(report):
    # a test's outcome is its call's, unless setup or teardown failed or setup skipped it
    if report.when == "call" or report.failed or (report.when == "setup" and report.skipped):
        _write({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                "detail": _detail(report) if not report.passed else ""})


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "failed", "detail": _detail(report)})
