"""Facts of the API that the pure-Python stages share with the spec models, without pydantic."""

from __future__ import annotations


def max_drop(num_layers: int) -> int:
    """The most decoder layers an L-layer model can lose: L - 2 (the one place this fact lives).

    The last layer is never a candidate (the score lists stop before it: no window starts or ends
    there), and at least one candidate layer must remain besides it.
    """
    return num_layers - 2
