"""Sparse point bundle adjustment through dv4d.ba: convergence, fixed parameters, motion-only."""

import numpy as np

from dv4d.pipeline.metrics import umeyama
from dv4d.pipeline.point_ba import Observations, bundle_adjust

PRINCIPAL = np.array([80.0, 60.0])


def random_scene(
    rng: np.random.Generator, focal: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Observations]:
    """(R, t, points, exact observations) of 5 cameras on an arc seeing 300 points."""
    num_cams, num_pts = 5, 300
    R = np.stack([np.eye(3)] * num_cams)
    for c in range(1, num_cams):
        a = 0.05 * c
        R[c] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    t = np.stack([np.array([-0.3 * c, 0.05 * c, 0.0]) for c in range(num_cams)])
    points = rng.uniform([-2, -1.5, 3], [2, 1.5, 7], (num_pts, 3))
    cam = np.repeat(np.arange(num_cams), num_pts)
    pt = np.tile(np.arange(num_pts), num_cams)
    xc = np.einsum("mij,mj->mi", R[cam], points[pt]) + t[cam]
    xy = focal * xc[:, :2] / xc[:, 2:] + PRINCIPAL
    return R, t, points, Observations(cam, pt, xy)


def test_converges_with_focal_and_first_camera_fixed() -> None:
    rng = np.random.default_rng(0)
    R, t, points, obs = random_scene(rng, 140.0)
    t0 = t + rng.normal(0, 0.02, t.shape)
    t0[0] = t[0]
    p0 = points + rng.normal(0, 0.05, points.shape)
    free_cams = np.arange(5) > 0
    start = bundle_adjust(R, t0, p0, 147.0, PRINCIPAL, obs, free_cams, np.ones(300, bool), True, 0, 1.0)
    assert np.abs(start.residuals).max() > 1.0
    sol = bundle_adjust(R, t0, p0, 147.0, PRINCIPAL, obs, free_cams, np.ones(300, bool), True, 50, 1.0)
    assert np.sqrt(np.mean(sol.residuals**2)) < 1e-3
    assert abs(sol.focal - 140.0) < 0.1
    np.testing.assert_array_equal(sol.t[0], t[0])
    np.testing.assert_array_equal(sol.R[0], R[0])
    # Scale is the free gauge: compare the shape up to scale.
    sim = umeyama(sol.points, points)
    assert np.abs(sim.apply(sol.points) - points).max() < 1e-3
    assert sol.residuals.shape == (1500, 2) and (sol.depth > 0).all()


def test_motion_only_and_windows_keep_fixed_parameters() -> None:
    rng = np.random.default_rng(1)
    R, t, points, obs = random_scene(rng, 140.0)
    t0 = t + rng.normal(0, 0.02, t.shape)
    # Motion only: every pose free, points fixed at the truth -> poses come back exactly.
    sol = bundle_adjust(
        R, t0, points, 140.0, PRINCIPAL, obs, np.ones(5, bool), np.zeros(300, bool), False, 30, 1.0
    )
    np.testing.assert_allclose(sol.t, t, atol=1e-6)
    np.testing.assert_array_equal(sol.points, points)
    assert sol.focal == 140.0
    # A window: cameras 3 and 4 free with half of the points, the rest fixed at the truth.
    t1 = t.copy()
    t1[3:] = t0[3:]
    free_pts = np.arange(300) < 150
    p1 = points.copy()
    p1[free_pts] += rng.normal(0, 0.05, (150, 3))
    win = bundle_adjust(R, t1, p1, 140.0, PRINCIPAL, obs, np.arange(5) >= 3, free_pts, False, 50, 1.0)
    np.testing.assert_array_equal(win.t[:3], t[:3])
    np.testing.assert_array_equal(win.points[~free_pts], points[~free_pts])
    np.testing.assert_allclose(win.t[3:], t[3:], atol=1e-6)
    np.testing.assert_allclose(win.points[free_pts], points[free_pts], atol=1e-5)


def test_robust_loss_resists_outliers() -> None:
    rng = np.random.default_rng(2)
    R, t, points, obs = random_scene(rng, 140.0)
    xy = obs.xy.copy()
    bad = rng.choice(len(xy), 40, replace=False)
    xy[bad] += rng.uniform(-30, 30, (40, 2))
    t0 = t + rng.normal(0, 0.01, t.shape)
    t0[0] = t[0]
    sol = bundle_adjust(R, t0, points, 140.0, PRINCIPAL, Observations(obs.cam, obs.pt, xy), np.arange(5) > 0,
                        np.zeros(300, bool), False, 50, 1.0)  # fmt: skip
    assert np.abs(sol.t - t).max() < 2e-3
