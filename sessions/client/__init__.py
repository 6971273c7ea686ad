"""The client side: the `lucid-sessions` CLI, its REST client, offline verify, the launcher.

`_client.py` speaks to the gateway (upload with resume, replay, the JSON endpoints),
`verify.py` checks a session against its signed root without keys, `evidence.py` exports and
checks evidence bundles and the audit log, `launcher.py` runs the three services on loopback
ports (`lucid-sessions up`, the end-to-end tests and the bench), `cli.py` is the command line.
"""

from sessions.client._client import (
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
