"""Token roles: what a token may do (sessions/api/access.py holds the rule of every route).

Apart from the token shapes (sessions/common/tokens.py, pydantic models) so the CLI can
offer the roles as choices without loading pydantic on every command.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a token may do (see `sessions.api.access` for the rule of every route)."""

    RECORDER = "recorder"
    VIEWER = "viewer"
    AUDITOR = "auditor"
    ADMIN = "admin"
