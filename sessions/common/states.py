"""The session state machine, enforced by storage with a compare-and-set.

    recording --> finalizing --> completed
        |             |
        +--> failed <-+            any state but deleted --> deleted

`finalizing` may go back to `recording` only through a crash-recovery re-run of
finalize, which is why finalize is allowed to start from `finalizing` too.
"""

from __future__ import annotations

from enum import StrEnum

from sessions.common.errors import InvalidState


class SessionState(StrEnum):
    RECORDING = "recording"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"


TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.RECORDING: frozenset({SessionState.FINALIZING, SessionState.FAILED,
                                       SessionState.DELETED}),
    SessionState.FINALIZING: frozenset({SessionState.FINALIZING, SessionState.COMPLETED,
                                        SessionState.FAILED, SessionState.DELETED}),
    SessionState.COMPLETED: frozenset({SessionState.DELETED}),
    SessionState.FAILED: frozenset({SessionState.DELETED}),
    SessionState.DELETED: frozenset(),
}


def can_transition(current: SessionState, target: SessionState) -> bool:
    """Return whether the machine allows current -> target."""
    return target in TRANSITIONS[current]


def check_transition(current: SessionState, target: SessionState) -> None:
    """Raise InvalidState (409) unless current -> target is allowed."""
    if not can_transition(current, target):
        raise InvalidState(f"a {current.value} session cannot become {target.value}",
                           extra={"state": current.value})


def require_state(current: SessionState, *allowed: SessionState, action: str) -> None:
    """Raise InvalidState (409) unless current is one of allowed."""
    if current not in allowed:
        names = ", ".join(s.value for s in allowed)
        raise InvalidState(f"cannot {action} a {current.value} session (needs {names})",
                           extra={"state": current.value})
