"""Settings for the whole suite."""

from __future__ import annotations

from hypothesis import settings

# No per-example deadline: on a loaded machine a property test's timing says nothing about
# the code (the machine runs many suites at once), and a test must not depend on speed.
settings.register_profile("lucid", deadline=None)
settings.load_profile("lucid")

# The Ceph cluster of tests/storage/rgw_server.py is registered here, once for every test
# directory: a session fixture imported into several test modules would start one per module.
from tests.storage.rgw_server import rgw_server  # noqa: E402, F401 - a fixture
