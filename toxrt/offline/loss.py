"""Contrastive loss on Euclidean distances (Chopra et al. 2005; Torrents et al. 2025, Appendix 2).

For a pair of embeddings at distance D with label l (0 = positive, same fragment; 1 = negative,
coexisting fragments):

    L = (1 - l) * max(0, D - D_pos)^2 + l * max(0, D_neg - D)^2

so a positive pair costs nothing while D <= D_pos (D_pos stops the fragment collapsing to a
point) and a negative pair costs nothing once D >= D_neg (D_neg stops the space scattering).
The paper uses D_pos = 1, D_neg = 10.
"""
from __future__ import annotations

import torch

D_POS = 1.0
D_NEG = 10.0


def pair_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d), (n, d) -> (n,) Euclidean distances.

    The squared distance is clamped away from 0 so the square root's gradient stays finite for
    identical embeddings (the positive term's gradient there is 0 anyway).
    """
    return torch.sqrt(torch.clamp(((a - b) ** 2).sum(dim=1), min=1e-12))


def contrastive_loss(distance: torch.Tensor, negative: torch.Tensor, d_pos: float = D_POS,
                     d_neg: float = D_NEG) -> torch.Tensor:
    """Per-pair loss (n,) for distances (n,) and labels negative (n,) bool (True = negative pair)."""
    positive_term = torch.clamp(distance - d_pos, min=0.0) ** 2
    negative_term = torch.clamp(d_neg - distance, min=0.0) ** 2
    return torch.where(negative, negative_term, positive_term)
