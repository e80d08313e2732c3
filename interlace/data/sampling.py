"""Which rows of each subset to take: `first` (the paper) or seeded `random`, and how caps are shared.

Both modes pick row indices up front from the subset's size, so the choice is a pure function of
(size, fraction, seed, subset name): the same spec reads exactly the same rows on every worker and on
every restart, and tests can assert the exact ids.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence


def rows_to_take(num_rows: int, fraction: float) -> int:
    """The paper's per-subset size: max(1, int(fraction * rows)); never more than the subset has."""
    return min(num_rows, max(1, int(fraction * num_rows)))


def subset_seed(seed: int, subset: str) -> int:
    """A per-subset seed that does not depend on the other subsets chosen or on Python's hash salt."""
    digest = hashlib.sha256(f"{seed}\0{subset}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def pick_indices(num_rows: int, k: int, *, mode: str, seed: int, subset: str) -> list[int]:
    """Sorted row indices in [0, num_rows): the first k, or k drawn without replacement.

    `random` draws with `random.Random(subset_seed(seed, subset)).sample(range(num_rows), k)`; the
    reader then streams the subset once and keeps the drawn rows (a seeded skip over the stream), so
    memory is O(k) even for a million-row subset.
    """
    k = max(0, min(k, num_rows))
    if mode == "first":
        return list(range(k))
    if mode == "random":
        return sorted(random.Random(subset_seed(seed, subset)).sample(range(num_rows), k))
    raise ValueError(f"sampling must be 'first' or 'random', not {mode!r}")


def share_cap(quotas: Sequence[int], cap: int | None) -> list[int]:
    """Scale per-subset quotas down so they sum to at most `cap`, keeping their proportions.

    A global cap applied to the stream would take every sample from the first subsets; spreading it
    proportionally keeps the subset mix the fraction implies. Largest remainders get the leftover
    units (ties: earlier subset first), so the result is deterministic and sums exactly to the cap.
    """
    total = sum(quotas)
    if cap is None or total <= cap:
        return list(quotas)
    exact = [q * cap / total for q in quotas]
    out = [math.floor(x) for x in exact]
    left = cap - sum(out)
    order = sorted(range(len(quotas)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:left]:
        out[i] += 1
    return out
