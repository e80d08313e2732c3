"""Shared settings for these tests: one torch thread, no hub access.

On the shared 2-core machine two intra-op threads per process make tiny-model training ~10x slower
under load (measured: 0.09 s vs 0.86 s per step), so the tests pin torch to one thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _one_thread_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
