"""The one ensemble rule: a weighted mean of the members' probability vectors.

Bundles, training, the research reports and the metrics all mix members through here, so the
shipped ensemble and every score reported for it are the same computation. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def normalised_weights(
    weights: Mapping[str, float] | None, members: Sequence[str]
) -> dict[str, float]:
    """Each member's share, summing to 1; equal shares when `weights` is None.

    Raises ValueError when a member has no weight or the weights sum to zero.
    """
    weights = dict.fromkeys(members, 1.0) if weights is None else weights
    missing = [name for name in members if name not in weights]
    if missing:
        raise ValueError(f"no ensemble weight for {missing}")
    total = sum(weights[name] for name in members)
    if not total > 0:
        raise ValueError(f"ensemble weights {dict(weights)!r} sum to {total}, not above 0")
    return {name: weights[name] / total for name in members}


def mix(probabilities: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """``sum_m w_m * p_m`` over the members in `weights`, with the weights normalised.

    Arrays are (N, classes) or (classes,); members of `probabilities` without a weight are
    ignored.
    """
    shares = normalised_weights(weights, list(weights))
    return sum(share * np.asarray(probabilities[name]) for name, share in shares.items())
