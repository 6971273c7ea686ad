"""Loaded into the `schemathesis` CLI by tests/e2e/test_schemathesis.py (SCHEMATHESIS_HOOKS).

CPython 3.11.7's `ast.parse` can raise "SystemError: AST constructor recursion depth
mismatch" when called deep in a stack (fixed in later CPython releases).  Hypothesis
calls it only to *describe* a lambda in a strategy's repr, and schemathesis's coverage
phase builds such reprs; the error then aborts the operation's run as a tool error.
A description is cosmetic, so this falls back to a generic one instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis.internal import lambda_sources

_describe: Callable[[Any], str] = lambda_sources.lambda_description


def _robust_description(f: Any) -> str:
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <source not shown>"


lambda_sources.lambda_description = _robust_description  # type: ignore[assignment]
