"""SO(3)/SE(3) exp/log/compose/inverse/adjoint against identities and finite differences."""

import math

import pytest
import torch

from dv4d.ba.lie import (
    se3_adjoint,
    se3_compose,
    se3_exp,
    se3_inverse,
    se3_log,
    se3_transform,
    skew,
    so3_exp,
    so3_exp_and_left_jacobian,
    so3_inverse,
    so3_left_jacobian,
    so3_left_jacobian_inverse,
    so3_log,
    vee,
)

DT = torch.float64


def _random_axis_angles(n: int, max_angle: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=gen, dtype=DT)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return axis * (max_angle * torch.rand(n, 1, generator=gen, dtype=DT))


@pytest.mark.parametrize("scale", [0.0, 1e-12, 1e-7, 1e-3, 1.0, math.pi - 1e-2, math.pi - 1e-7])
def test_so3_exp_log_roundtrip(scale: float) -> None:
    w = _random_axis_angles(64, 1.0)
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-300) * scale
    r = so3_exp(w)
    eye = torch.eye(3, dtype=DT).expand(64, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(64, dtype=DT), atol=1e-12)
    w_back = so3_log(r)
    assert torch.allclose(so3_exp(w_back), r, atol=1e-9)
    if scale < math.pi - 1e-3:
        assert torch.allclose(w_back, w, atol=1e-9)


def test_so3_log_exactly_pi_gives_angle_pi() -> None:
    axis = torch.tensor([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]], dtype=DT)
    r = so3_exp(math.pi * axis)
    w = so3_log(r)
    assert torch.allclose(w.norm(dim=-1), torch.full((2,), math.pi, dtype=DT), atol=1e-7)
    assert torch.allclose(so3_exp(w), r, atol=1e-9)


def test_so3_exp_matches_matrix_exponential() -> None:
    w = _random_axis_angles(16, 3.0, seed=1)
    assert torch.allclose(so3_exp(w), torch.linalg.matrix_exp(skew(w)), atol=1e-12)


def test_skew_vee_and_cross_product() -> None:
    a, b = _random_axis_angles(8, 2.0, 2), _random_axis_angles(8, 2.0, 3)
    assert torch.allclose((skew(a) @ b[:, :, None])[:, :, 0], torch.linalg.cross(a, b, dim=-1))
    assert torch.allclose(vee(skew(a)), a)


@pytest.mark.parametrize("scale", [1e-9, 1e-5, 0.5, 2.5])
def test_left_jacobian_finite_differences(scale: float) -> None:
    w = _random_axis_angles(8, 1.0, seed=4)
    w = w / w.norm(dim=-1, keepdim=True) * scale
    jl = so3_left_jacobian(w)
    eps = 1e-6
    for k in range(3):
        d = torch.zeros(3, dtype=DT)
        d[k] = eps
        lhs = so3_log(so3_exp(w + d) @ so3_inverse(so3_exp(w))) / eps
        assert torch.allclose(lhs, jl[:, :, k], atol=1e-6)
    assert torch.allclose(
        so3_left_jacobian_inverse(w) @ jl, torch.eye(3, dtype=DT).expand(8, 3, 3), atol=1e-10
    )
    rot, both = so3_exp_and_left_jacobian(w)
    assert torch.equal(rot, so3_exp(w)) and torch.equal(both, jl)


def test_so3_exp_gradient_finite_at_identity() -> None:
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    so3_exp(w).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_se3_exp_log_inverse_compose() -> None:
    gen = torch.Generator().manual_seed(5)
    xi = torch.cat((torch.randn(32, 3, generator=gen, dtype=DT), _random_axis_angles(32, 3.0, 6)), dim=-1)
    t = se3_exp(xi)
    assert torch.allclose(se3_log(t), xi, atol=1e-9)
    eye = torch.eye(4, dtype=DT).expand(32, 4, 4)
    assert torch.allclose(se3_compose(t, se3_inverse(t)), eye, atol=1e-12)
    assert torch.allclose(se3_exp(torch.zeros(6, dtype=DT)), torch.eye(4, dtype=DT))
    x = torch.randn(32, 3, generator=gen, dtype=DT)
    assert torch.allclose(se3_transform(se3_inverse(t), se3_transform(t, x)), x, atol=1e-12)
    assert torch.allclose(se3_exp(xi), torch.linalg.matrix_exp(_hat(xi)), atol=1e-10)


def _hat(xi: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype)
    out[..., :3, :3] = skew(xi[..., 3:])
    out[..., :3, 3] = xi[..., :3]
    return out


def test_se3_adjoint_identity() -> None:
    gen = torch.Generator().manual_seed(7)
    t = se3_exp(torch.randn(16, 6, generator=gen, dtype=DT))
    xi = 0.3 * torch.randn(16, 6, generator=gen, dtype=DT)
    lhs = se3_compose(se3_compose(t, se3_exp(xi)), se3_inverse(t))
    rhs = se3_exp((se3_adjoint(t) @ xi[:, :, None])[:, :, 0])
    assert torch.allclose(lhs, rhs, atol=1e-10)
