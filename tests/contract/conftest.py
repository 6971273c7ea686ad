"""The three services' OpenAPI documents, built in-process once per module."""

from __future__ import annotations

from typing import Any

import pytest

from sessions.api.config import Settings as ApiSettings
from sessions.api.main import create_app as api_app
from sessions.common.secrets import write_new_secret
from sessions.core import MasterKey, NoteSigner
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app
from tests.api.fakes import ADMIN_TOKEN, SERVICE_TOKEN

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Doc]:
    """Return the gateway's, the processor's and storage's OpenAPI documents."""
    root = tmp_path_factory.mktemp("openapi")
    token = root / "service.token"
    token.write_text(SERVICE_TOKEN + "\n")
    (root / "gw" / "secrets").mkdir(parents=True)
    (root / "gw" / "secrets" / "admin.token").write_text(ADMIN_TOKEN + "\n")
    (root / "gw" / "secrets" / "service.token").write_text(SERVICE_TOKEN + "\n")
    write_new_secret(root / "signing.key", NoteSigner.generate("lucid-doc").key_text())
    write_new_secret(root / "master.key", MasterKey.generate().to_text())
    gateway = api_app(ApiSettings(data_dir=root / "gw", processor_url="http://processor.test"))
    processor = processor_app(ProcessorSettings(
        mode="production", data_dir=root / "processor", service_token_file=token,
        master_key_file=root / "master.key", signing_key_file=root / "signing.key",
        storage_url="http://storage.test"))
    storage = storage_app(StorageSettings(mode="local", data_dir=root / "storage",
                                          service_token_file=token))
    return {"gateway": gateway.openapi(), "processor": processor.openapi(),
            "storage": storage.openapi()}
