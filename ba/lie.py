"""Batched SO(3) and SE(3): exp, log, compose, inverse, adjoint, left Jacobians.

All functions take tensors with arbitrary leading batch dimensions. Rotations are (..., 3, 3)
matrices, rigid transforms (..., 4, 4) homogeneous matrices. Tangent vectors of SE(3) are ordered
(rho, phi) = (translation part, rotation part), so ``se3_exp(xi)`` has rotation ``so3_exp(phi)``
and translation ``so3_left_jacobian(phi) @ rho``. Small angles use Taylor series, so values and
gradients stay finite at the identity; ``so3_log`` also handles angles close to pi.
"""

import math

import torch
from torch import Tensor

_SMALL_ANGLE = 1e-4
"""Below this angle (radians) the Taylor expansions replace the closed forms."""

_NEAR_PI = 1e-3
"""Within this distance of pi, ``so3_log`` reads the axis from the symmetric part of R."""


def skew(v: Tensor) -> Tensor:
    """Cross-product matrix [v]x of shape (..., 3, 3) with [v]x w = v x w."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=-1).reshape(*v.shape[:-1], 3, 3)


def vee(m: Tensor) -> Tensor:
    """Inverse of ``skew`` on the antisymmetric part: (..., 3, 3) -> (..., 3)."""
    return 0.5 * torch.stack(
        (m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]), dim=-1
    )


def _squared_norm(w: Tensor) -> Tensor:
    """|w|^2 over the last dimension of size 3 (unrolled: faster than a tiny reduction on CPU)."""
    return w[..., 0] * w[..., 0] + w[..., 1] * w[..., 1] + w[..., 2] * w[..., 2]


def _angle(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Angle theta, theta squared and a mask of small angles, each (...,)."""
    theta2 = _squared_norm(w)
    small = theta2 < _SMALL_ANGLE**2
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    return safe2.sqrt(), safe2, small


def _rodrigues_coefficients(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 for t = |w|, each (...,).

    Few operations (one sine, one cosine, series in Horner form): on CUDA each one is a kernel.
    """
    t2 = _squared_norm(w)
    small = t2 < _SMALL_ANGLE**2
    safe2 = torch.where(small, torch.ones_like(t2), t2)
    theta = safe2.sqrt()
    sin = torch.sin(theta)
    a = torch.where(small, 1 + t2 * (t2 / 120 - 1 / 6), sin / theta)
    b = torch.where(small, 0.5 + t2 * (t2 / 720 - 1 / 24), (1 - torch.cos(theta)) / safe2)
    c = torch.where(small, 1 / 6 + t2 * (t2 / 5040 - 1 / 120), (theta - sin) / (safe2 * theta))
    return a, b, c


def _skew_squared(w: Tensor) -> Tensor:
    """[w]x^2 = w w^T - |w|^2 I without a batched matmul, (..., 3, 3)."""
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return w[..., :, None] * w[..., None, :] - _squared_norm(w)[..., None, None] * eye


def so3_exp(w: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from axis-angle vectors w (..., 3) (Rodrigues)."""
    a, b, _ = _rodrigues_coefficients(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[..., None, None] * skew(w) + b[..., None, None] * _skew_squared(w)


def so3_left_jacobian(w: Tensor) -> Tensor:
    """Left Jacobian J_l(w) (..., 3, 3): exp(w + d) = exp(J_l(w) d) exp(w) to first order."""
    _, b, c = _rodrigues_coefficients(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + b[..., None, None] * skew(w) + c[..., None, None] * _skew_squared(w)


def so3_exp_and_left_jacobian(w: Tensor) -> tuple[Tensor, Tensor]:
    """``so3_exp(w)`` and ``so3_left_jacobian(w)`` together, sharing their terms (half the kernels)."""
    a, b, c = _rodrigues_coefficients(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    k, k2 = skew(w), _skew_squared(w)
    return eye + a[..., None, None] * k + b[..., None, None] * k2, eye + b[..., None, None] * k + c[
        ..., None, None
    ] * k2


def so3_left_jacobian_inverse(w: Tensor) -> Tensor:
    """Inverse of the left Jacobian (..., 3, 3)."""
    theta, theta2, small = _angle(w)
    t2 = _squared_norm(w)
    half = 0.5 * theta
    d = torch.where(
        small,
        1 / 12 + t2 / 720 + t2 * t2 / 30240,
        (1 - half * torch.cos(half) / torch.sin(half).clamp_min(1e-300)) / theta2,
    )
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye - 0.5 * skew(w) + d[..., None, None] * _skew_squared(w)


def so3_log(r: Tensor) -> Tensor:
    """Axis-angle vectors (..., 3) of rotation matrices r (..., 3, 3), angle in [0, pi]."""
    trace = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    cos = ((trace - 1) / 2).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    v = vee(r)
    sin = torch.sin(theta)
    small = theta < _SMALL_ANGLE
    near_pi = theta > math.pi - _NEAR_PI
    safe_sin = torch.where(small | near_pi, torch.ones_like(sin), sin)
    t2 = theta * theta
    factor = torch.where(small, 1 + t2 / 6 + 7 * t2 * t2 / 360, theta / safe_sin)
    generic = factor[..., None] * v
    # Near pi: R + R^T - 2 cos(t) I = 2 (1 - cos(t)) n n^T; the column of largest norm gives the axis.
    sym = r + r.transpose(-1, -2) - 2 * torch.eye(3, dtype=r.dtype, device=r.device) * cos[..., None, None]
    cols = sym.transpose(-1, -2)
    best = (cols * cols).sum(-1).argmax(-1)
    axis = torch.gather(cols, -2, best[..., None, None].expand(*best.shape, 1, 3)).squeeze(-2)
    axis = axis / (axis * axis).sum(-1, keepdim=True).sqrt().clamp_min(1e-300)
    sign = torch.where((axis * v).sum(-1) < 0, -torch.ones_like(theta), torch.ones_like(theta))
    flipped = (sign * theta)[..., None] * axis
    return torch.where(near_pi[..., None], flipped, generic)


def so3_inverse(r: Tensor) -> Tensor:
    """Inverse rotation (transpose), (..., 3, 3)."""
    return r.transpose(-1, -2)


def so3_compose(a: Tensor, b: Tensor) -> Tensor:
    """Composition a * b of rotations, (..., 3, 3)."""
    return a @ b


def so3_adjoint(r: Tensor) -> Tensor:
    """Adjoint of SO(3) (the rotation itself): exp(Ad(R) w) = R exp(w) R^-1."""
    return r


def se3_from_rt(r: Tensor, t: Tensor) -> Tensor:
    """Homogeneous matrices (..., 4, 4) from rotations (..., 3, 3) and translations (..., 3)."""
    out = torch.zeros(*r.shape[:-2], 4, 4, dtype=r.dtype, device=r.device)
    out[..., :3, :3] = r
    out[..., :3, 3] = t
    out[..., 3, 3] = 1
    return out


def se3_exp(xi: Tensor) -> Tensor:
    """Rigid transforms (..., 4, 4) from tangent vectors xi = (rho, phi) of shape (..., 6)."""
    rho, phi = xi[..., :3], xi[..., 3:]
    t = (so3_left_jacobian(phi) @ rho[..., None])[..., 0]
    return se3_from_rt(so3_exp(phi), t)


def se3_log(t: Tensor) -> Tensor:
    """Tangent vectors (rho, phi) of shape (..., 6) of rigid transforms (..., 4, 4)."""
    phi = so3_log(t[..., :3, :3])
    rho = (so3_left_jacobian_inverse(phi) @ t[..., :3, 3:4])[..., 0]
    return torch.cat((rho, phi), dim=-1)


def se3_inverse(t: Tensor) -> Tensor:
    """Inverse of rigid transforms (..., 4, 4)."""
    rt = t[..., :3, :3].transpose(-1, -2)
    return se3_from_rt(rt, -(rt @ t[..., :3, 3:4])[..., 0])


def se3_compose(a: Tensor, b: Tensor) -> Tensor:
    """Composition a * b of rigid transforms (..., 4, 4)."""
    return a @ b


def se3_adjoint(t: Tensor) -> Tensor:
    """Adjoint (..., 6, 6) for (rho, phi) ordering: exp(Ad(T) xi) = T exp(xi) T^-1."""
    r = t[..., :3, :3]
    out = torch.zeros(*t.shape[:-2], 6, 6, dtype=t.dtype, device=t.device)
    out[..., :3, :3] = r
    out[..., 3:, 3:] = r
    out[..., :3, 3:] = skew(t[..., :3, 3]) @ r
    return out


def se3_transform(t: Tensor, x: Tensor) -> Tensor:
    """Apply rigid transforms (..., 4, 4) to points (..., 3)."""
    return (t[..., :3, :3] @ x[..., None])[..., 0] + t[..., :3, 3]
