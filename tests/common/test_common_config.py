"""Configuration of the three services: `LUCID_` variables, secrets only from files.

Every bad value must give one `ConfigError` naming the variable; local mode generates
each missing secret once (mode 0600) and production mode refuses to start without them;
no secret ever appears in a repr, a log line or a ConfigError message.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sessions.api import config as api_config
from sessions.common.secrets import (
    MIN_TOKEN_LENGTH,
    PLACEHOLDERS,
    ConfigError,
    check_token,
    write_new_secret,
)
from sessions.common.settings import CommonSettings, Mode, load
from sessions.core import DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, MasterKey, NoteSigner
from sessions.processor import config as processor_config
from sessions.processor.keys import ensure_local_keys, load_node_keys
from sessions.storage import config as storage_config

GOOD_TOKEN = "tok-" + "Q7v" * 15  # 49 characters, no whitespace
OTHER_TOKEN = "other-" + "z9" * 20


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Run every test with no LUCID_ variable set but a data dir under tmp_path."""
    for name in list(os.environ):
        if name.upper().startswith("LUCID_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the default data dir is relative: keep it in tmp_path
    data = tmp_path / "data"
    monkeypatch.setenv("LUCID_DATA_DIR", str(data))
    yield data


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def file_state(path: Path) -> tuple[int, int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, stat.S_IMODE(st.st_mode), path.read_bytes()


# ---------------------------------------------------------------------------------- defaults


def test_processor_defaults(clean_env: Path) -> None:
    s = processor_config.load_settings()
    assert s.mode is Mode.LOCAL and not s.production
    assert s.data_dir == clean_env and s.secrets_dir == clean_env / "secrets"
    assert (s.host, s.log_level, s.port, s.processor_port) == ("127.0.0.1", "info", 8085, 8085)
    assert s.storage_url == "http://127.0.0.1:8086"
    assert (s.chunk_size, s.zstd_level) == (DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL)
    assert (s.inflight_chunks, s.prefetch_chunks) == (2, 3)
    assert s.master_key_file is None and s.signing_key_file is None
    assert s.service_token_file is None
    assert re.fullmatch(r"lucid-[a-z0-9.-]*", s.node_name)
    assert "node_name" not in s.model_fields_set


def test_api_and_storage_defaults(clean_env: Path) -> None:
    a = api_config.load_settings()
    assert (a.port, a.processor_url, a.admin_token_file) == (8087, "http://127.0.0.1:8085", None)
    assert (a.max_upload_bytes, a.max_json_bytes) == (8 * 1024**3, 64 * 1024)
    s = storage_config.load_settings()
    assert (s.port, s.max_chunk_bytes) == (8086, 16 * 1024 * 1024 + 4096)
    assert s.storage_dir == clean_env / "storage"


def test_the_default_data_dir_is_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUCID_DATA_DIR")
    assert load(CommonSettings).data_dir == Path("lucid-data")


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"LUCID_PROCESSOR_PORT": "9001", "LUCID_CHUNK_SIZE": str(2 * 1024**2),
                        "LUCID_ZSTD_LEVEL": "19", "LUCID_MODE": "production",
                        "LUCID_STORAGE_URL": "http://store.internal:8443/base///",
                        "LUCID_NODE_NAME": "node-7.eu_west", "LUCID_LOG_LEVEL": "debug"}.items():
        monkeypatch.setenv(name, value)
    s = processor_config.load_settings()
    assert (s.port, s.chunk_size, s.zstd_level) == (9001, 2 * 1024**2, 19)
    assert s.production and s.log_level == "debug" and s.node_name == "node-7.eu_west"
    assert s.storage_url == "http://store.internal:8443/base"  # trailing slashes stripped


def test_settings_are_frozen() -> None:
    s = processor_config.load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        s.processor_port = 1  # type: ignore[misc]
    assert s.processor_port == 8085


# -------------------------------------------------------------------------------- bad values

Loader = Callable[[], Any]
LOADERS: dict[str, Loader] = {
    "common": lambda: load(CommonSettings),
    "processor": processor_config.load_settings,
    "api": api_config.load_settings,
    "storage": storage_config.load_settings,
}

BAD_VALUES = [
    ("processor", "LUCID_PROCESSOR_PORT", "0"),
    ("processor", "LUCID_PROCESSOR_PORT", "65536"),
    ("processor", "LUCID_PROCESSOR_PORT", "http"),
    ("processor", "LUCID_CHUNK_SIZE", "100"),
    ("processor", "LUCID_CHUNK_SIZE", str(16 * 1024**2 + 1)),
    ("processor", "LUCID_ZSTD_LEVEL", "30"),
    ("processor", "LUCID_ZSTD_LEVEL", "0"),
    ("processor", "LUCID_INFLIGHT_CHUNKS", "0"),
    ("processor", "LUCID_PREFETCH_CHUNKS", "17"),
    ("processor", "LUCID_STORAGE_URL", "ftp://x"),
    ("processor", "LUCID_STORAGE_URL", "http://a b"),
    ("processor", "LUCID_NODE_NAME", "bad name"),
    ("processor", "LUCID_NODE_NAME", "-leading-dash"),
    ("processor", "LUCID_NODE_NAME", "n" * 65),
    ("common", "LUCID_MODE", "prod"),
    ("common", "LUCID_LOG_LEVEL", "loud"),
    ("processor", "LUCID_MODE", "prod"),
    ("api", "LUCID_LOG_LEVEL", "loud"),
    ("api", "LUCID_API_PORT", "0"),
    ("api", "LUCID_PROCESSOR_URL", "ftp://x"),
    ("api", "LUCID_MAX_UPLOAD_BYTES", "0"),
    ("api", "LUCID_MAX_JSON_BYTES", "1023"),
    ("storage", "LUCID_STORAGE_PORT", "70000"),
    ("storage", "LUCID_MAX_CHUNK_BYTES", str((1 << 30) + 1)),
    ("storage", "LUCID_MODE", "prod"),
]


@pytest.mark.parametrize(("service", "name", "value"), BAD_VALUES,
                         ids=[f"{s}-{n}={v[:12]}" for s, n, v in BAD_VALUES])
def test_each_bad_value_is_named(monkeypatch: pytest.MonkeyPatch, service: str, name: str,
                                 value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        LOADERS[service]()
    message = str(info.value)
    assert message.startswith("invalid configuration:")
    assert re.search(rf"^  {name}: ", message, re.MULTILINE), message


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {"LUCID_PROCESSOR_PORT": "0", "LUCID_CHUNK_SIZE": "100", "LUCID_ZSTD_LEVEL": "30",
           "LUCID_MODE": "prod", "LUCID_STORAGE_URL": "ftp://x", "LUCID_NODE_NAME": "bad name",
           "LUCID_LOG_LEVEL": "loud"}
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        processor_config.load_settings()
    named = set(re.findall(r"^  (LUCID_[A-Z_]+):", str(info.value), re.MULTILINE))
    assert named == set(bad)


def test_unknown_lucid_variables_and_raw_secrets_are_ignored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCID_NO_SUCH_SETTING", "1")
    monkeypatch.setenv("LUCID_SERVICE_TOKEN", GOOD_TOKEN)  # secrets come only from *_FILE
    s = storage_config.load_settings()
    assert s.service_token() != GOOD_TOKEN
    assert GOOD_TOKEN not in repr(s)


# --------------------------------------------------------------------- local mode: generation

TOKEN_GETTERS: dict[str, tuple[Loader, str, str]] = {
    "service-token": (lambda: storage_config.load_settings().service_token(), "service.token",
                      "LUCID_SERVICE_TOKEN_FILE"),
    "admin-token": (lambda: api_config.load_settings().admin_token(), "admin.token",
                    "LUCID_ADMIN_TOKEN_FILE"),
}


@pytest.mark.parametrize("which", list(TOKEN_GETTERS))
def test_local_mode_generates_a_token_once(clean_env: Path, caplog: pytest.LogCaptureFixture,
                                           which: str) -> None:
    get, filename, _ = TOKEN_GETTERS[which]
    path = clean_env / "secrets" / filename
    assert not path.exists()
    with caplog.at_level(logging.WARNING):
        token = get()
    assert path.read_text(encoding="utf-8") == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert len(token) >= MIN_TOKEN_LENGTH and check_token(token, what="t") == token
    assert str(path) in caplog.text  # the operator is told where it went ...
    assert token not in caplog.text  # ... but never what it is
    before = file_state(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert get() == token
    assert file_state(path) == before
    assert "generated" not in caplog.text


def test_the_generated_tokens_differ_per_secret_and_per_data_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    service = storage_config.load_settings().service_token()
    admin = api_config.load_settings().admin_token()
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path / "elsewhere"))
    assert len({service, admin, storage_config.load_settings().service_token()}) == 3


def test_all_three_services_share_one_local_service_token() -> None:
    tokens = {processor_config.load_settings().service_token(),
              api_config.load_settings().service_token(),
              storage_config.load_settings().service_token()}
    assert len(tokens) == 1


def test_local_mode_generates_both_keys_once(clean_env: Path) -> None:
    settings = processor_config.load_settings()
    master_path, signing_path = clean_env / "secrets" / "master.key", clean_env / "secrets" / \
        "signing.key"
    keys = load_node_keys(settings)
    for path in (master_path, signing_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert MasterKey.from_file(master_path).key_id == keys.master.key_id
    assert keys.signer.name == settings.node_name
    assert keys.origin("X") == f"{settings.node_name}/sessions/X"
    before = (file_state(master_path), file_state(signing_path))
    assert ensure_local_keys(settings) == []
    again = load_node_keys(processor_config.load_settings())
    assert (again.master.key_id, again.signer.key_hash) == (keys.master.key_id,
                                                            keys.signer.key_hash)
    assert again.verifier == keys.verifier
    assert (file_state(master_path), file_state(signing_path)) == before


def test_ensure_local_keys_reports_each_file_it_makes(clean_env: Path) -> None:
    made = ensure_local_keys(processor_config.load_settings())
    assert made == [f"generated master key at {clean_env / 'secrets' / 'master.key'} (mode 0600)",
                    "generated node signing key at "
                    f"{clean_env / 'secrets' / 'signing.key'} (mode 0600)"]


def test_local_mode_never_generates_a_configured_but_missing_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "master.key"
    monkeypatch.setenv("LUCID_MASTER_KEY_FILE", str(missing))
    with pytest.raises(ConfigError) as info:
        load_node_keys(processor_config.load_settings())
    assert "does not exist" in str(info.value)
    assert not missing.exists()
    token_file = tmp_path / "nowhere" / "service.token"
    monkeypatch.setenv("LUCID_SERVICE_TOKEN_FILE", str(token_file))
    with pytest.raises(ConfigError, match="does not exist"):
        storage_config.load_settings().service_token()
    assert not token_file.exists()


def test_write_new_secret_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "s.txt"
    assert write_new_secret(path, "first\n\n") is True
    assert path.read_text() == "first\n"
    assert write_new_secret(path, "second") is False
    assert path.read_text() == "first\n"


# ------------------------------------------------------------------------------- production


@pytest.mark.parametrize("which", list(TOKEN_GETTERS))
def test_production_needs_each_token_file(monkeypatch: pytest.MonkeyPatch, clean_env: Path,
                                          which: str) -> None:
    get, _, env = TOKEN_GETTERS[which]
    monkeypatch.setenv("LUCID_MODE", "production")
    with pytest.raises(ConfigError) as info:
        get()
    assert env in str(info.value)
    assert not (clean_env / "secrets").exists()


@pytest.mark.parametrize(("master_set", "signing_set", "named"), [
    (False, False, ["LUCID_MASTER_KEY_FILE", "LUCID_SIGNING_KEY_FILE"]),
    (True, False, ["LUCID_SIGNING_KEY_FILE"]),
    (False, True, ["LUCID_MASTER_KEY_FILE"]),
], ids=["neither", "no-signing-key", "no-master-key"])
def test_production_needs_both_key_files(monkeypatch: pytest.MonkeyPatch, clean_env: Path,
                                         tmp_path: Path, master_set: bool, signing_set: bool,
                                         named: list[str]) -> None:
    monkeypatch.setenv("LUCID_MODE", "production")
    if master_set:
        monkeypatch.setenv("LUCID_MASTER_KEY_FILE",
                           str(write(tmp_path / "m.key", MasterKey.generate().to_text())))
    if signing_set:
        monkeypatch.setenv("LUCID_SIGNING_KEY_FILE",
                           str(write(tmp_path / "s.key", NoteSigner.generate("n").key_text())))
    settings = processor_config.load_settings()
    assert ensure_local_keys(settings) == []
    with pytest.raises(ConfigError) as info:
        load_node_keys(settings)
    message = str(info.value)
    for env in ["LUCID_MASTER_KEY_FILE", "LUCID_SIGNING_KEY_FILE"]:
        assert (env in message) is (env in named)
    assert not (clean_env / "secrets").exists()


def test_production_with_valid_secret_files_works(monkeypatch: pytest.MonkeyPatch,
                                                  clean_env: Path, tmp_path: Path) -> None:
    master = MasterKey.generate()
    signer = NoteSigner.generate("prod-node-1")
    files = {"LUCID_SERVICE_TOKEN_FILE": write(tmp_path / "svc", GOOD_TOKEN + "\n"),
             "LUCID_ADMIN_TOKEN_FILE": write(tmp_path / "adm", "  " + OTHER_TOKEN + "\r\n"),
             "LUCID_MASTER_KEY_FILE": write(tmp_path / "mk", master.to_text()),
             "LUCID_SIGNING_KEY_FILE": write(tmp_path / "sk", signer.key_text() + "\n")}
    monkeypatch.setenv("LUCID_MODE", "production")
    monkeypatch.setenv("LUCID_NODE_NAME", "prod-node-1")
    for env, path in files.items():
        monkeypatch.setenv(env, str(path))
    assert storage_config.load_settings().service_token() == GOOD_TOKEN
    assert api_config.load_settings().admin_token() == OTHER_TOKEN
    keys = load_node_keys(processor_config.load_settings())
    assert keys.master.key_id == master.key_id
    assert (keys.signer.name, keys.signer.key_hash) == ("prod-node-1", signer.key_hash)
    assert not (clean_env / "secrets").exists()


def test_production_with_a_missing_secret_file_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("LUCID_MODE", "production")
    monkeypatch.setenv("LUCID_SERVICE_TOKEN_FILE", str(tmp_path / "absent.token"))
    with pytest.raises(ConfigError) as info:
        storage_config.load_settings().service_token()
    assert "absent.token" in str(info.value) and "does not exist" in str(info.value)


# ------------------------------------------------------------------------- refused secrets

BAD_TOKENS = {
    "changeme": "changeme",
    "changeme-upper": "CHANGEME",
    "ten-chars": "a1b2c3d4e5",
    "one-short": "k" * (MIN_TOKEN_LENGTH - 1),
    "inner-space": "abcdefghij" * 2 + " " + "klmnopqrst" * 2,
    "inner-tab": "abcdefghij" * 2 + "\t" + "klmnopqrst" * 2,
    **{f"placeholder-{p}": p for p in sorted(PLACEHOLDERS)},
}


@pytest.mark.parametrize("token", list(BAD_TOKENS.values()), ids=list(BAD_TOKENS))
@pytest.mark.parametrize("which", list(TOKEN_GETTERS))
def test_placeholder_short_or_spaced_tokens_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, which: str,
                                                        token: str) -> None:
    get, _, env = TOKEN_GETTERS[which]
    monkeypatch.setenv(env, str(write(tmp_path / "t", token + "\n")))
    with pytest.raises(ConfigError) as info:
        get()
    what = which.replace("-", " ")
    # one of two fixed messages: neither can carry any part of the token
    assert str(info.value) in {
        f"{what} must be a random string of at least {MIN_TOKEN_LENGTH} characters, "
        "not a placeholder",
        f"{what} must not contain whitespace"}


@pytest.mark.parametrize("content", ["", "\n", "   \n\t"], ids=["empty", "newline", "blank"])
def test_an_empty_token_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        content: str) -> None:
    monkeypatch.setenv("LUCID_SERVICE_TOKEN_FILE", str(write(tmp_path / "t", content)))
    with pytest.raises(ConfigError, match="is empty"):
        storage_config.load_settings().service_token()


def test_a_long_token_of_placeholder_words_is_allowed() -> None:
    token = "changeme" * 4
    assert check_token(token, what="t") == token


MASTER_KEY_HEX = "5e" * 32
BAD_MASTER_KEYS: dict[str, bytes] = {
    "62-hex": b"c0ffee" * 10 + b"c0",
    "66-hex": b"deadbeef" * 8 + b"d0",
    "64-non-hex": b"g0" * 32,
    "64-uppercase-hex": b"AB" * 32,
    "valid-key-plus-extra-line": MASTER_KEY_HEX.encode() + b"\nfeedfacefeedface\n",
    "valid-key-with-trailing-space": MASTER_KEY_HEX.encode() + b" ",
    "not-utf8": b"\xff\xfe" * 32,
    "empty": b"",
    "whitespace-only": b"   \n",
}


@pytest.mark.parametrize("content", list(BAD_MASTER_KEYS.values()), ids=list(BAD_MASTER_KEYS))
def test_a_malformed_master_key_file_is_refused_without_echoing_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    monkeypatch.setenv("LUCID_MASTER_KEY_FILE", str(path))
    with pytest.raises(ConfigError) as info:
        load_node_keys(processor_config.load_settings())
    message = str(info.value)
    assert message.startswith("master key: ")
    assert str(path) in message
    text = content.decode("latin-1").strip()
    for i in range(0, max(len(text) - 7, 0)):  # no 8-character run of the content leaks
        assert text[i:i + 8] not in message
    assert path.read_bytes() == content  # and the configured file is never replaced


def test_a_valid_master_key_with_crlf_is_accepted(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(MASTER_KEY_HEX.encode() + b"\r\n")
    monkeypatch.setenv("LUCID_MASTER_KEY_FILE", str(path))
    keys = load_node_keys(processor_config.load_settings())
    assert keys.master.key_id == MasterKey(bytes.fromhex(MASTER_KEY_HEX)).key_id


def test_a_malformed_signing_key_is_refused_without_echoing_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = NoteSigner.generate("node-a").key_text()
    bad = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    path = write(tmp_path / "signing.key", bad)
    monkeypatch.setenv("LUCID_SIGNING_KEY_FILE", str(path))
    with pytest.raises(ConfigError) as info:
        load_node_keys(processor_config.load_settings())
    message = str(info.value)
    assert message.startswith("node signing key (")
    seed_b64 = bad.split("+", 4)[4]
    assert seed_b64[:12] not in message and bad not in message


def test_a_signing_key_named_differently_from_lucid_node_name_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCID_NODE_NAME", "alpha")
    first = load_node_keys(processor_config.load_settings())  # generates a key named alpha
    assert first.signer.name == "alpha"
    monkeypatch.setenv("LUCID_NODE_NAME", "beta")
    with pytest.raises(ConfigError) as info:
        load_node_keys(processor_config.load_settings())
    message = str(info.value)
    assert "LUCID_NODE_NAME" in message and "'beta'" in message and "'alpha'" in message
    monkeypatch.delenv("LUCID_NODE_NAME")  # unset: the key's own name is used
    assert load_node_keys(processor_config.load_settings()).signer.name == "alpha"
    monkeypatch.setenv("LUCID_NODE_NAME", "alpha")
    assert load_node_keys(processor_config.load_settings()).signer.key_hash == \
        first.signer.key_hash


def test_secrets_never_appear_in_reprs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    master = MasterKey(bytes.fromhex(MASTER_KEY_HEX))
    signer = NoteSigner.generate("node-r")
    seed_b64 = signer.key_text().split("+", 4)[4]
    monkeypatch.setenv("LUCID_SERVICE_TOKEN_FILE", str(write(tmp_path / "svc", GOOD_TOKEN)))
    monkeypatch.setenv("LUCID_ADMIN_TOKEN_FILE", str(write(tmp_path / "adm", OTHER_TOKEN)))
    monkeypatch.setenv("LUCID_MASTER_KEY_FILE", str(write(tmp_path / "mk", master.to_text())))
    monkeypatch.setenv("LUCID_SIGNING_KEY_FILE", str(write(tmp_path / "sk", signer.key_text())))
    p, a = processor_config.load_settings(), api_config.load_settings()
    assert (p.service_token(), a.admin_token()) == (GOOD_TOKEN, OTHER_TOKEN)
    keys = load_node_keys(p)
    shown = " ".join([repr(p), str(p), repr(a), str(a), repr(keys), repr(keys.master),
                      repr(keys.signer), repr(p.model_dump()), repr(a.model_dump())])
    for secret in (GOOD_TOKEN, OTHER_TOKEN, MASTER_KEY_HEX, seed_b64):
        assert secret not in shown
    assert master.key_id in repr(keys.master)  # the non-secret id is what identifies it
