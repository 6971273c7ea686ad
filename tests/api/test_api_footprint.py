"""The gateway holds no keys: it does not even load the crypto core.

Loading `sessions.core` (cryptography's Rust bindings, zstd) cost the gateway about
9 MB of resident memory under its 100 MB budget (tests/e2e/test_memory_budget.py)
when the audit-log models imported it at module level.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_gateway_does_not_load_the_crypto_core() -> None:
    code = ("import json, sys, sessions.api.main; print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'cryptography' or m.startswith('sessions.core'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: S603
                          check=True, timeout=120)
    assert json.loads(done.stdout) == []
