"""Products of many tiny matrices (one per residual), tuned per device.

CPU: torch's batched matmul is slow for a transposed (strided) left factor with a tiny inner
dimension (a^T b with a of shape (N, 2, 9), say), and reductions over tiny dimensions are slow;
unrolling the inner dimension into elementwise multiply-adds is faster there. Matrix-vector
products with a wider inner dimension (9 camera parameters) are fastest as batched matmul. CUDA: every
elementwise op is a kernel launch, so one broadcast multiply and one reduction are used instead
(cuBLAS batched products of millions of tiny matrices are slow too).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_MAX_UNROLLED = 4
"""Inner dimensions up to this size are unrolled; larger ones use matmul / sum."""


def _unroll(x: Tensor, size: int) -> bool:
    return size <= _MAX_UNROLLED and not x.is_cuda


def small_sum(x: Tensor, dim: int) -> Tensor:
    """x.sum(dim), unrolled when that dimension is small."""
    size = x.shape[dim]
    if not _unroll(x, size):
        return x.sum(dim)
    out = x.select(dim, 0)
    for k in range(1, size):
        out = out + x.select(dim, k)
    return out


def small_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Batched a @ b for a (..., i, k) and b (..., k, j)."""
    inner = a.shape[-1]
    if a.is_cuda:
        return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)
    if inner > _MAX_UNROLLED or a.is_contiguous():
        return a @ b
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for k in range(1, inner):
        out.addcmul_(a[..., :, k, None], b[..., None, k, :])
    return out


def small_at_b(a: Tensor, b: Tensor) -> Tensor:
    """Batched a^T @ b for a (..., m, k) and b (..., m, l)."""
    return small_matmul(a.transpose(-1, -2), b)


def small_matvec(a: Tensor, x: Tensor) -> Tensor:
    """Batched a @ x for a (..., k, l) and x (..., l)."""
    inner = a.shape[-1]
    if not a.is_cuda and inner > _MAX_UNROLLED:
        return (a @ x[..., None])[..., 0]
    if not _unroll(a, inner):
        return (a * x[..., None, :]).sum(-1)
    out = a[..., 0] * x[..., None, 0]
    for k in range(1, inner):
        out = out + a[..., k] * x[..., None, k]
    return out


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` torch CPU threads (``None``: unchanged), then restore the setting.

    Small solves are fastest on one thread, and on a loaded machine extra OpenMP threads spin-wait.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
