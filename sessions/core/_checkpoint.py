"""C2SP transparency-log checkpoints: the signed statement of a tree's size and root.

A checkpoint is a signed note whose text is exactly

    <origin>\\n<tree size>\\n<base64(root hash)>\\n[<extension line>\\n ...]

Only that one spelling is accepted: `unmarshal(text).marshal() == text` always.

Spec: https://c2sp.org/tlog-checkpoint ("Note text"); the note itself is
https://c2sp.org/signed-note (see `_note`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from sessions.core._errors import CheckpointError
from sessions.core._merkle_hash import HASH_SIZE
from sessions.core._note import NoteSigner, NoteVerifier, open_note, sign_note

__all__ = ["MAX_TREE_SIZE", "Checkpoint", "open_checkpoint", "sign_checkpoint"]

MAX_TREE_SIZE = (1 << 64) - 1
"""Tree sizes are uint64, as in RFC 9162 and transparency-dev/formats."""

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")  # ASCII decimal, no sign, no leading zero


def _check_line(line: str) -> None:
    """Check that `line` is a non-empty line without control characters (CheckpointError)."""
    if not line or any(c < " " for c in line):
        raise CheckpointError("malformed checkpoint")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, size, RFC 9162 root hash and opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check the fields can be marshalled (CheckpointError otherwise).

        Requires: origin and each extension non-empty with no control character,
        0 ≤ size ≤ 2**64 - 1, len(root_hash) == 32.  Spec: tlog-checkpoint "Note text".
        """
        if not isinstance(self.origin, str) or not isinstance(self.root_hash, bytes):
            raise CheckpointError("malformed checkpoint")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError("malformed checkpoint")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError("malformed checkpoint")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for line in (self.origin, *self.extensions):
            if not isinstance(line, str):
                raise CheckpointError("malformed checkpoint")
            _check_line(line)

    def marshal(self) -> str:
        """Return the checkpoint's note text, each line ending in a newline.

        Spec: tlog-checkpoint "Note text".
        """
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def unmarshal(cls, text: str) -> Checkpoint:
        """Return the checkpoint whose note text is exactly `text` (CheckpointError otherwise).

        Requires: at least three lines, text ends in a newline; a decimal size
        without sign or leading zero; a canonical base64 32-byte root; non-empty
        extension lines.  Spec: tlog-checkpoint "Note text".
        """
        if not text.endswith("\n"):
            raise CheckpointError("malformed checkpoint")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or not _SIZE.fullmatch(lines[1]):
            raise CheckpointError("malformed checkpoint")
        try:
            root = base64.b64decode(lines[2].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CheckpointError("malformed checkpoint") from exc
        checkpoint = cls(lines[0], int(lines[1]), root, tuple(lines[3:]))
        if checkpoint.marshal() != text:  # e.g. non-zero padding bits in the base64 root
            raise CheckpointError("malformed checkpoint")
        return checkpoint


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> bytes:
    """Return the signed note of `cp` by `signer`.

    Spec: tlog-checkpoint "Signatures" (the key name SHOULD be the origin; not enforced).
    """
    return sign_note(cp.marshal(), signer)


def open_checkpoint(
    signed: bytes, *, verifier: NoteVerifier, origin: str | None = None
) -> Checkpoint:
    """Return the checkpoint in `signed`, after its signature by `verifier` has verified.

    Order: the note's signatures are checked first (NoteError family), then the
    text is parsed (CheckpointError), then the origin is compared with `origin`
    when one is given (CheckpointError).
    Spec: tlog-checkpoint "Note text" and "Signatures"; signed-note "Signatures".
    """
    note = open_note(signed, verifiers=[verifier])
    checkpoint = Checkpoint.unmarshal(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError("checkpoint origin does not match")
    return checkpoint
