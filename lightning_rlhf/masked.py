"""Masked statistics: means, variances and whitening over the valid positions of a tensor.

Conventions used throughout the RL maths (``advantages.py``, ``kl.py``, ``losses.py``):

* ``B`` is the batch size, ``T`` the number of (response) tokens per row.
* A ``mask`` is a float or bool tensor with 1 at valid tokens and 0 elsewhere. Masked positions
  are *selected away* (``torch.where``), never multiplied by 0: a NaN or inf there (padding, a
  ``-inf`` logit under top-k) cannot reach a valid position's result. Sums over an all-zero mask
  are divided by ``max(count, 1)``, so empty masks give 0 rather than NaN.
* Group and batch statistics are taken in float64 and a spread below :func:`zero_spread`'s
  tolerance counts as none, so identical scores have advantage exactly 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_fill_zero(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask`` is 1, exactly 0 elsewhere (even where ``x`` is NaN or inf).

    ``x * mask`` would keep ``nan * 0 = nan`` and ``inf * 0 = nan``; ``torch.where`` does not.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x`` (or broadcastable to it).

    Returns:
        same shape as ``x``.
    """
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def zero_spread(std: Tensor, x: Tensor, dim: int | None = None) -> Tensor:
    """Whether a standard deviation is rounding noise: ``std <= 2 * eps(x.dtype) * max|x|``.

    Values that differ by a few units in the last place of the dtype they came in (e.g. a
    float32 sum of per-token rewards) have no real spread; dividing their residue by
    ``std + eps`` would turn it into advantages of order 1 (eight float32 12.7s: +0.49 each).

    Args:
        std: the spread, 0-dim (``dim=None``) or with ``dim`` kept, e.g. (B/G, 1).
        x: the values it was measured on, e.g. (B/G, G); their dtype sets the tolerance.
        dim: the dimension reduced for ``std`` (``None``: all).

    Returns:
        bool tensor shaped like ``std``.
    """
    scale = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    return std <= 2 * torch.finfo(x.dtype).eps * scale.to(std.dtype)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    ``sum(where(m, x, 0)) / max(sum(m), 1)`` over all elements (``dim=None``, 0-dim result) or
    along ``dim`` (that dimension is reduced). NaN or inf at masked positions is ignored.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x`` (or broadcastable to it).
        dim: dimension to reduce; ``None`` reduces everything.

    Returns:
        0-dim tensor if ``dim is None``, else ``x`` with ``dim`` removed, e.g. (B,).
    """
    kept = masked_fill_zero(x, mask)
    mask = mask.to(x.dtype)
    if dim is None:
        return kept.sum() / mask.sum().clamp(min=1)
    return kept.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid elements.

    ``var = masked_mean((x - masked_mean(x))**2)``, multiplied by the Bessel correction
    ``n / (n - 1)`` when ``unbiased`` and ``n = sum(mask) > 1`` (no correction for n <= 1).
    Computed in float64, returned in ``x``'s dtype.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``.
        unbiased: apply Bessel's correction.

    Returns:
        0-dim tensor.
    """
    x64 = x.double()
    var = masked_mean((x64 - masked_mean(x64, mask)) ** 2, mask)
    if unbiased:
        n = mask.double().sum()
        var = var * n / (n - 1).clamp(min=1)  # n <= 1: var is 0 and stays 0
    return var.to(x.dtype)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean, unit variance over the valid elements.

    ``y = (x - mean) / sqrt(var + eps)`` with ``mean``/``var`` from :func:`masked_mean` and
    :func:`masked_var` (unbiased) over all valid elements; if ``shift_mean`` is False the
    mean is added back (``y + mean``: rescale only). Masked positions are set to 0. Computed in
    float64; values whose spread is rounding noise (:func:`zero_spread`) give ``y = 0``
    (``mean`` when not ``shift_mean``), not their residue scaled up by ``1 / sqrt(eps)``.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``.
        shift_mean: whether the output is centred (True) or keeps the original mean.
        eps: added to the variance.

    Returns:
        same shape as ``x``.
    """
    kept = masked_fill_zero(x, mask)
    x64 = kept.double()
    mean = masked_mean(x64, mask)
    var = masked_var(x64, mask, unbiased=True)
    whitened = (x64 - mean) * torch.rsqrt(var + eps)
    whitened = torch.where(zero_spread(var.sqrt(), kept), 0.0, whitened)
    if not shift_mean:
        whitened = whitened + mean
    return masked_fill_zero(whitened, mask).to(x.dtype)
