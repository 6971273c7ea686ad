"""A node's signing keys over time, and which of them signed a note.

Each `KeyPeriod` is one Ed25519 note key (its C2SP verifier key text) with the
times it was the node's signing key: `not_before` ≤ use < `not_after` (None:
open), and `compromised_after` once the key is known to have leaked after that
time.  Times are RFC 3339 UTC strings; this module never reads a clock.

A note names its signer on each signature line (key name and key hash), so the
verifier picks the period whose key signed *before* checking the signature with
it; signature lines of other keys (a witness's cosignature) are left alone.

Spec: https://c2sp.org/signed-note ("Signatures", "Verifier keys").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sessions.core._errors import KeyMaterialError, UnknownKeyError
from sessions.core._note import NoteVerifier, _parse_signature_line, _split

__all__ = ["KeyPeriod", "key_history_from_json", "signing_period"]


@dataclass(frozen=True)
class KeyPeriod:
    """One signing key of a node and when it signed."""

    verifier_key: str
    not_before: str | None = None
    not_after: str | None = None
    compromised_after: str | None = None

    def __post_init__(self) -> None:
        """Check the verifier key parses (KeyMaterialError) and the times are strings or None."""
        NoteVerifier.from_key_text(self.verifier_key)
        for moment in (self.not_before, self.not_after, self.compromised_after):
            if moment is not None and (not isinstance(moment, str) or len(moment) > 64):
                raise KeyMaterialError("malformed key period")

    @property
    def verifier(self) -> NoteVerifier:
        """The period's note verifier."""
        return NoteVerifier.from_key_text(self.verifier_key)

    def to_json(self) -> dict[str, Any]:
        return {"verifier_key": self.verifier_key, "not_before": self.not_before,
                "not_after": self.not_after, "compromised_after": self.compromised_after}


def key_history_from_json(items: Any) -> tuple[KeyPeriod, ...]:
    """Return the periods of a JSON list of `KeyPeriod.to_json` objects (KeyMaterialError)."""
    if not isinstance(items, list):
        raise KeyMaterialError("malformed key history")
    try:
        return tuple(KeyPeriod(verifier_key=d["verifier_key"], not_before=d.get("not_before"),
                               not_after=d.get("not_after"),
                               compromised_after=d.get("compromised_after")) for d in items)
    except (KeyError, TypeError, AttributeError) as exc:
        raise KeyMaterialError("malformed key history") from exc


def signing_period(signed: bytes, periods: Sequence[KeyPeriod]) -> KeyPeriod:
    """Return the period whose key one of the note's signature lines names.

    Only picks: the caller then opens the note with that period's verifier, which
    checks the signature.  Raises MalformedNoteError for a malformed note and
    UnknownKeyError if no line names a key of `periods`.
    """
    _, lines = _split(signed)
    known = {(p.verifier.name, p.verifier.key_hash): p for p in periods}
    for line in lines:
        sig = _parse_signature_line(line)
        if (sig.name, sig.key_hash) in known:
            return known[(sig.name, sig.key_hash)]
    raise UnknownKeyError("no signature from a key of the history")
