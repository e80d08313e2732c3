"""One torch thread and no hub access for every test here (see tests/fixtures/settings.py)."""

from tests.fixtures.settings import one_thread_offline  # noqa: F401  (an autouse fixture)
