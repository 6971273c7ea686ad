"""The client side: the `lucid-sessions` CLI, its REST client, offline verify, the launcher.

`_client.py` speaks to the gateway (upload with resume, replay, the JSON endpoints),
`verify.py` checks a session against its signed root without keys, `evidence.py` exports and
checks evidence bundles and the audit log, `launcher.py` runs the three services on loopback
ports (`lucid-sessions up`, the end-to-end tests and the bench), `cli.py` is the command line.
"""

import sys

# httpx imports its own command line (`httpx.main`: click, rich and pygments, where they
# are installed) with itself; no command here uses it, and it cost each one ~50 ms.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: import refused

from sessions.client._client import (  # noqa: E402 - after the guard above
    MIB,
    ClientError,
    FileKey,
    LucidClient,
    Progress,
    ResumeStore,
    UploadPlan,
    default_state_file,
    download_replay,
    parse_pin,
    tls_verify,
    upload_file,
)

__all__ = [
    "MIB",
    "ClientError",
    "FileKey",
    "LucidClient",
    "Progress",
    "ResumeStore",
    "UploadPlan",
    "default_state_file",
    "download_replay",
    "parse_pin",
    "tls_verify",
    "upload_file",
]
