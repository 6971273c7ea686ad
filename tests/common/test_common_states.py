"""The session state machine: every (current, target) pair, checked against a table of its own.

The table below is written out by hand from the diagram in `sessions/common/states.py`,
so a change to `TRANSITIONS` that the diagram does not make shows up here.
"""

from __future__ import annotations

import itertools

import pytest

from sessions.common.errors import InvalidState, ServiceError
from sessions.common.states import (
    TRANSITIONS,
    SessionState,
    can_transition,
    check_transition,
    require_state,
)

R, FZ, C, FL, D = (SessionState.RECORDING, SessionState.FINALIZING, SessionState.COMPLETED,
                   SessionState.FAILED, SessionState.DELETED)

# The allowed edges, as the module docstring draws them; everything else is refused.
ALLOWED = {
    (R, FZ), (R, FL), (R, D),
    (FZ, FZ), (FZ, C), (FZ, FL), (FZ, D),  # finalizing -> finalizing: crash-recovery re-run
    (C, D),
    (FL, D),
}
ALL_PAIRS = list(itertools.product(SessionState, repeat=2))


def pair_id(pair: tuple[SessionState, SessionState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_the_five_states_and_their_wire_values() -> None:
    assert [s.value for s in SessionState] == ["recording", "finalizing", "completed", "failed",
                                               "deleted"]
    assert set(TRANSITIONS) == set(SessionState)


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=[pair_id(p) for p in ALL_PAIRS])
def test_every_pair_is_allowed_exactly_when_listed(
        pair: tuple[SessionState, SessionState]) -> None:
    current, target = pair
    expected = pair in ALLOWED
    assert can_transition(current, target) is expected
    if expected:
        assert check_transition(current, target) is None
    else:
        with pytest.raises(InvalidState) as info:
            check_transition(current, target)
        err = info.value
        assert (err.status, err.code) == (409, "invalid_state")
        assert err.extra == {"state": current.value}
        assert current.value in err.detail and target.value in err.detail
        assert err.body() == {"error": "invalid_state", "detail": err.detail,
                              "state": current.value}


def test_the_table_has_exactly_the_listed_edges() -> None:
    edges = {(cur, tgt) for cur, targets in TRANSITIONS.items() for tgt in targets}
    assert edges == ALLOWED


@pytest.mark.parametrize("target", list(SessionState), ids=lambda s: s.value)
def test_deleted_is_terminal(target: SessionState) -> None:
    assert not can_transition(D, target)
    with pytest.raises(InvalidState) as info:
        check_transition(D, target)
    assert info.value.extra == {"state": "deleted"}


def test_every_live_state_can_be_deleted_and_no_state_returns_to_recording() -> None:
    assert all(can_transition(s, D) for s in SessionState if s is not D)
    assert not any(can_transition(s, R) for s in SessionState)


def test_every_state_reaches_deleted_and_completed_needs_finalizing() -> None:
    def reachable(start: SessionState) -> set[SessionState]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert all(D in reachable(s) for s in SessionState)
    assert reachable(R) == set(SessionState)
    assert [s for s in SessionState if can_transition(s, C)] == [FZ]


@pytest.mark.parametrize("current", list(SessionState), ids=lambda s: s.value)
def test_require_state_passes_only_for_allowed_states(current: SessionState) -> None:
    allowed = (R, FZ)
    if current in allowed:
        assert require_state(current, *allowed, action="upload to") is None
        return
    with pytest.raises(InvalidState) as info:
        require_state(current, *allowed, action="upload to")
    err = info.value
    assert isinstance(err, ServiceError)
    assert (err.status, err.code, err.extra) == (409, "invalid_state", {"state": current.value})
    assert err.detail == f"cannot upload to a {current.value} session (needs recording, finalizing)"


def test_require_state_with_no_allowed_state_refuses_everything() -> None:
    for current in SessionState:
        with pytest.raises(InvalidState):
            require_state(current, action="touch")


def test_states_compare_equal_to_their_strings() -> None:
    assert SessionState("completed") is C
    assert C == "completed"
    with pytest.raises(ValueError):
        SessionState("COMPLETED")
