"""The processor's key material: the master key (wraps session keys) and the node signing key.

Local mode generates both once into `<data_dir>/secrets/` (mode 0600) and says
where; production mode refuses to start unless both `*_FILE` settings point at
valid files.  A configured key is never replaced by a fresh one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sessions.common.secrets import ConfigError, write_new_secret
from sessions.core import (
    KeyMaterialError,
    MasterKey,
    NoteSigner,
    NoteVerifier,
    UnwrapError,
    WrappedKey,
)
from sessions.processor.config import Settings

log = logging.getLogger("lucid.processor.keys")


@dataclass(frozen=True)
class NodeKeys:
    """The two keys only the processor holds."""

    master: MasterKey
    signer: NoteSigner
    previous: tuple[MasterKey, ...] = ()

    def unwrap(self, wrapped: WrappedKey, *, session_id: str) -> bytes:
        """Return a session's data key, unwrapped by whichever of our master keys wrapped it.

        Raises UnwrapError when no master key we hold has the wrapped key's id.
        """
        return self.master_for(wrapped.key_id).unwrap(wrapped, session_id=session_id)

    def master_for(self, key_id: str) -> MasterKey:
        """Return the current or a previous master key with this id; raise UnwrapError."""
        for key in (self.master, *self.previous):
            if key.key_id == key_id:
                return key
        raise UnwrapError("no master key with this id is configured")

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier()

    def origin(self, session_id: str) -> str:
        """Return the checkpoint origin line for a session of this node."""
        return f"{self.signer.name}/sessions/{session_id}"


def _paths(settings: Settings) -> tuple[Path, Path]:
    master = settings.master_key_file or settings.secrets_dir / "master.key"
    signing = settings.signing_key_file or settings.secrets_dir / "signing.key"
    return master, signing


def ensure_local_keys(settings: Settings) -> list[str]:
    """Generate the missing local key files; return one message per file generated.

    Production mode never generates: it returns [] and `load_node_keys` decides.
    """
    if settings.production:
        return []
    master, signing = _paths(settings)
    made = []
    if settings.master_key_file is None and write_new_secret(master,
                                                             MasterKey.generate().to_text()):
        made.append(f"generated master key at {master} (mode 0600)")
    if settings.signing_key_file is None and write_new_secret(
            signing, NoteSigner.generate(settings.node_name).key_text()):
        made.append(f"generated node signing key at {signing} (mode 0600)")
    return made


def load_node_keys(settings: Settings) -> NodeKeys:
    """Return the node's keys, or raise ConfigError saying exactly what is missing or wrong."""
    if settings.production:
        missing = [env for env, value in (("LUCID_MASTER_KEY_FILE", settings.master_key_file),
                                          ("LUCID_SIGNING_KEY_FILE", settings.signing_key_file))
                   if value is None]
        if missing:
            raise ConfigError("production mode needs " + " and ".join(missing)
                              + " pointing at secret files")
    for message in ensure_local_keys(settings):
        log.warning(message)
    master_path, signing_path = _paths(settings)
    try:
        master = MasterKey.from_file(master_path)
    except KeyMaterialError as exc:
        raise ConfigError(f"master key: {exc}") from None
    try:
        signer = NoteSigner.from_key_text(_read(signing_path, "node signing key"))
    except KeyMaterialError as exc:
        raise ConfigError(f"node signing key ({signing_path}): {exc}") from None
    previous = []
    listed = (settings.previous_master_key_files or "").split(",")
    for name in filter(None, (p.strip() for p in listed)):
        try:
            previous.append(MasterKey.from_file(Path(name)))
        except KeyMaterialError as exc:
            raise ConfigError(f"previous master key: {exc}") from None
    if "node_name" in settings.model_fields_set and signer.name != settings.node_name:
        raise ConfigError(f"LUCID_NODE_NAME is {settings.node_name!r} but the signing key is "
                          f"named {signer.name!r}; they must agree")
    return NodeKeys(master=master, signer=signer, previous=tuple(previous))


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what}: file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: file {path} cannot be read ({type(exc).__name__})") from None
