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


# -- use_after_free: the per-operation exceptions, in the stateful phase too -------------------
# test_schemathesis.py switches `use_after_free` off for GET of one session, because a
# deleted session deliberately answers its tombstone (200, `state: deleted`) there, and
# for tus discovery (OPTIONS on an upload URL), which never looks the session up.
# schemathesis 4 applies per-operation check settings in the examples, coverage and
# fuzzing phases but not in the stateful one, so the same exception is made here, for
# exactly those operations and nothing else.

import functools  # noqa: E402

import schemathesis.specs.openapi.checks  # noqa: E402, F401 - registers the built-in checks
from schemathesis.checks import CHECKS  # noqa: E402

TOMBSTONE_READS = {("GET", "/v1/sessions/{session_id}"),
                   ("GET", "/internal/v1/sessions/{session_id}"),
                   # tus discovery answers 204 on any upload URL: it never looks a session up
                   ("OPTIONS", "/v1/sessions/{session_id}/upload")}
_use_after_free = CHECKS.get_one("use_after_free")


@functools.wraps(_use_after_free)
def use_after_free(ctx: Any, response: Any, case: Any) -> bool | None:
    if (case.operation.method.upper(), case.operation.path) in TOMBSTONE_READS:
        return None
    result: bool | None = _use_after_free(ctx, response, case)
    return result


CHECKS.register(use_after_free)
