"""One tuspy run against the gateway, in a process of its own (tests/e2e/test_tus_clients.py).

    python tuspy_upload.py ENDPOINT FILE CHUNK URL_DB [STOP_AT]

Uploads FILE in requests of CHUNK bytes, stopping once STOP_AT bytes are sent if given.
The upload URL is kept in tuspy's own URL store (URL_DB, keyed by the file's
fingerprint), so a second run of the same command, in a new process, resumes it.
The bearer token comes from LUCID_TOKEN; every PATCH carries `Upload-Checksum: sha1 ...`.
Prints one JSON line: {"url", "offset"}.
"""

from __future__ import annotations

import json
import os
import sys

from tusclient import client
from tusclient.storage.filestorage import FileStorage

UPPY_METADATA = {"relativePath": "null", "name": "desk.rec", "type": "video/x-lucid",
                 "filetype": "video/x-lucid", "filename": "desk.rec"}


def main(endpoint: str, path: str, chunk: str, url_db: str, stop_at: str | None = None) -> None:
    tus = client.TusClient(endpoint,
                           headers={"Authorization": "Bearer " + os.environ["LUCID_TOKEN"]})
    uploader = tus.uploader(file_path=path, chunk_size=int(chunk), metadata=UPPY_METADATA,
                            upload_checksum=True, store_url=True,
                            url_storage=FileStorage(url_db))
    if stop_at is None:
        uploader.upload()
    else:
        uploader.upload(stop_at=int(stop_at))
    print(json.dumps({"url": uploader.url, "offset": uploader.offset}))


if __name__ == "__main__":
    main(*sys.argv[1:])
