"""Camera Jacobians against autograd; robust loss values and weights."""

import pytest
import torch
from torch.autograd.functional import jacobian

from dv4d.ba.cameras import PinholeCameras, bal_project, bal_project_with_jacobians, pinhole_project
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.losses import RobustLoss

DT = torch.float64


def test_bal_jacobians_match_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 6
    cams = torch.zeros(n, 9, dtype=DT)
    cams[:, :3] = 0.5 * torch.randn(n, 3, generator=gen, dtype=DT)
    cams[:, 3:6] = torch.randn(n, 3, generator=gen, dtype=DT) + torch.tensor([0.0, 0.0, -8.0], dtype=DT)
    cams[:, 6] = 400 + 100 * torch.rand(n, generator=gen, dtype=DT)
    cams[:, 7] = -0.1
    cams[:, 8] = 0.02
    cams[0, :3] = 0.0  # identity rotation: the small-angle branch
    pts = torch.randn(n, 3, generator=gen, dtype=DT)
    out = bal_project_with_jacobians(cams, pts)
    assert torch.allclose(out.predicted, bal_project(cams, pts))
    for i in range(n):
        jc = jacobian(lambda c, i=i: bal_project(c[None], pts[i : i + 1])[0], cams[i])
        jp = jacobian(lambda x, i=i: bal_project(cams[i : i + 1], x[None])[0], pts[i])
        assert torch.allclose(out.d_camera[i], jc, rtol=1e-8, atol=1e-8)
        assert torch.allclose(out.d_point[i], jp, rtol=1e-8, atol=1e-8)
    # Per-camera rows with an observation -> camera index give the same values.
    index = torch.tensor([2, 0, 2, 5, 1, 2])
    shared = bal_project_with_jacobians(cams, pts, index)
    gathered = bal_project_with_jacobians(cams[index], pts)
    assert torch.allclose(bal_project(cams, pts, index), gathered.predicted, rtol=1e-14, atol=1e-12)
    for a, b in ((shared.predicted, gathered.predicted), (shared.d_camera, gathered.d_camera)):
        assert torch.allclose(a, b, rtol=1e-14, atol=1e-12)
    assert torch.allclose(shared.d_point, gathered.d_point, rtol=1e-14, atol=1e-12)


def test_pinhole_projection_and_jacobians() -> None:
    gen = torch.Generator().manual_seed(1)
    pts = torch.randn(5, 3, generator=gen, dtype=DT) + torch.tensor([0.0, 0.0, 5.0], dtype=DT)
    focal = torch.full((5,), 300.0, dtype=DT)
    pp = torch.tensor([[159.5, 119.5]], dtype=DT).expand(5, 2)
    out = pinhole_project(pts, focal, pp)
    assert torch.allclose(out.uv, 300.0 * pts[:, :2] / pts[:, 2:] + pp)
    for i in range(5):
        jp = jacobian(lambda x, i=i: pinhole_project(x[None], focal[i : i + 1], pp[i : i + 1]).uv[0], pts[i])
        jf = jacobian(
            lambda f, i=i: pinhole_project(pts[i : i + 1], f, pp[i : i + 1]).uv[0], focal[i : i + 1]
        )
        assert torch.allclose(out.d_point[i], jp)
        assert torch.allclose(out.d_focal[i], jf[:, 0])


def test_pinhole_cameras_shared_and_per_frame_focal() -> None:
    pp = torch.zeros(3, 2, dtype=DT)
    shared = PinholeCameras(torch.tensor([100.0], dtype=DT), pp)
    per_frame = PinholeCameras(torch.tensor([100.0, 200.0, 300.0], dtype=DT), pp)
    frames = torch.tensor([0, 2, 1])
    pts = torch.tensor([[1.0, 1.0, 1.0]] * 3, dtype=DT)
    assert shared.shared_focal and not per_frame.shared_focal
    assert torch.allclose(shared.project(pts, frames).uv[:, 0], torch.full((3,), 100.0, dtype=DT))
    assert torch.allclose(
        per_frame.project(pts, frames).uv[:, 0], torch.tensor([100.0, 300.0, 200.0], dtype=DT)
    )
    with pytest.raises(BundleAdjustmentError):
        PinholeCameras(torch.ones(2, dtype=DT), pp)


@pytest.mark.parametrize("kind", ["trivial", "huber", "cauchy"])
def test_loss_weight_is_derivative(kind: str) -> None:
    loss = RobustLoss(kind, 2.0)  # type: ignore[arg-type]
    s = torch.tensor([0.1, 1.0, 3.9, 4.1, 50.0], dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(loss.rho(s).sum(), s)
    assert torch.allclose(loss.weight(s.detach()), grad)


def test_loss_values() -> None:
    s = torch.tensor([1.0, 16.0], dtype=DT)
    assert torch.allclose(RobustLoss("huber", 2.0).rho(s), torch.tensor([1.0, 2 * 2 * 4 - 4], dtype=DT))
    assert torch.allclose(RobustLoss("cauchy", 1.0).rho(s), torch.log1p(s))
    assert torch.allclose(RobustLoss().rho(s), s)
    with pytest.raises(BundleAdjustmentError):
        RobustLoss("tukey")  # type: ignore[arg-type]
    with pytest.raises(BundleAdjustmentError):
        RobustLoss("huber", 0.0)
