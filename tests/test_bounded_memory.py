"""Bounded memory on long videos: the global keyframe adjustment in blocks, the motion-only poses in
chunks, point adjustments that give fixed cameras no Schur rows, instance tracks that release their
masks once they can no longer be continued."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import dv4d.pipeline.geometry as geometry
from dv4d.pipeline.errors import GeometryError
from dv4d.pipeline.geometry import GeometryConfig, estimate_geometry
from dv4d.pipeline.instances import InstanceTracker, TrackerConfig
from dv4d.pipeline.metrics import ate_rmse, trajectory_length
from dv4d.pipeline.point_ba import Observations, PointProblem, PointState, bundle_adjust
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene

FRAMES = 20


@pytest.fixture(scope="module")
def orbit() -> SyntheticScene:
    return render_scene(SceneConfig(num_frames=FRAMES, seed=1))


def relative_ate(c2w: np.ndarray, scene: SyntheticScene) -> float:
    truth = np.linalg.inv(scene.c2w[0]) @ scene.c2w
    return ate_rmse(c2w, truth) / trajectory_length(truth)


def test_blocks_and_chunks_bound_every_solve_and_keep_the_poses(
    orbit: SyntheticScene, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = np.arange(FRAMES) % 2 == 0  # 10 keyframes
    # No all-frame adjustment at the end: the keyframe and motion-only stages decide the poses.
    whole = GeometryConfig(final_ba_max_frames=0)
    bounded = replace(whole, global_ba_max_keyframes=4, motion_ba_chunk_frames=5)
    one = estimate_geometry(orbit.frames, keys, orbit.K, whole)
    free_cams: list[int] = []
    solve = geometry.bundle_adjust

    def spy(*args: object, **kwargs: object) -> object:
        free = args[6]
        assert isinstance(free, np.ndarray)
        free_cams.append(int(free.sum()))
        return solve(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(geometry, "bundle_adjust", spy)
    blocks = estimate_geometry(orbit.frames, keys, orbit.K, bounded)
    assert max(free_cams) == 5  # motion-only chunks; keyframe blocks free at most 4 (3 with the gauge)
    for result in (one, blocks):
        assert relative_ate(result.c2w, orbit) < 0.005
        assert result.reproj_rmse_px < 0.5
        assert 0.7 < result.static_fraction <= 1.0
        assert result.flags == []
    assert ate_rmse(blocks.c2w, one.c2w) / trajectory_length(one.c2w) < 0.003
    assert abs(blocks.reproj_rmse_px - one.reproj_rmse_px) < 0.1


def test_long_clip_refines_the_focal_over_its_keyframes(orbit: SyntheticScene) -> None:
    keys = np.arange(FRAMES) % 2 == 0
    # Too long for the final adjustment over every frame, and a focal search held to a wrong field of
    # view (70 degrees, the truth is 58): a reconstruction of the first keyframes must correct it.
    wrong = GeometryConfig(final_ba_max_frames=0, focal_search_fov_deg=(70.0,), focal_search_rounds=0)
    kept = estimate_geometry(orbit.frames, keys, None, replace(wrong, refine_focal=False))
    refined = estimate_geometry(orbit.frames, keys, None, wrong)
    assert abs(kept.K[0, 0] / orbit.K[0, 0] - 1) > 0.15
    assert abs(refined.K[0, 0] / orbit.K[0, 0] - 1) < 0.02
    assert relative_ate(refined.c2w, orbit) < min(0.005, relative_ate(kept.c2w, orbit))


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(GeometryError, match="global_ba_max_keyframes"):
        GeometryConfig(global_ba_max_keyframes=1)
    with pytest.raises(GeometryError, match="motion_ba_chunk_frames"):
        GeometryConfig(motion_ba_chunk_frames=0)


def test_fixed_cameras_get_no_camera_rows() -> None:
    rng = np.random.default_rng(3)
    num_cams, num_pts = 4, 50
    R = np.stack([np.eye(3)] * num_cams)
    t = np.stack([np.array([-0.2 * c, 0.0, 0.0]) for c in range(num_cams)])
    points = rng.uniform([-1, -1, 3], [1, 1, 5], (num_pts, 3))
    cam = np.repeat(np.arange(num_cams), num_pts)
    pt = np.tile(np.arange(num_pts), num_cams)
    xc = points[pt] + t[cam]
    obs = Observations(cam, pt, 100.0 * xc[:, :2] / xc[:, 2:] + 50.0)
    principal = np.array([50.0, 50.0])
    free_cams = np.arange(num_cams) >= 2
    state = PointState(*(torch.as_tensor(a, dtype=torch.float64) for a in (R, t, points, np.array([100.0]))))
    window = PointProblem(obs, principal, free_cams, np.ones(num_pts, bool), False, 1.0)
    with_cams, points_only = window.evaluate(state, jacobians=True)
    assert with_cams.camera_columns is not None and with_cams.camera_columns.shape == (2 * num_pts, 6)
    assert points_only.camera_columns is None and points_only.camera_jacobian is None
    assert points_only.point_jacobian is not None and points_only.point_jacobian.shape == (2 * num_pts, 2, 3)
    # With the focal refined every observation depends on a camera parameter: one term, 7 columns.
    (focal_term,) = PointProblem(obs, principal, free_cams, np.ones(num_pts, bool), True, 1.0).evaluate(
        state, jacobians=True
    )
    assert focal_term.camera_columns is not None and focal_term.camera_columns.shape == (4 * num_pts, 7)
    # The split problem still solves the window exactly.
    t0 = t.copy()
    t0[2:] += rng.normal(0, 0.02, (2, 3))
    p0 = points + rng.normal(0, 0.03, points.shape)
    sol = bundle_adjust(R, t0, p0, 100.0, principal, obs, free_cams, np.ones(num_pts, bool), False, 50, 1.0)
    np.testing.assert_array_equal(sol.t[:2], t[:2])
    np.testing.assert_allclose(sol.t, t, atol=1e-6)
    np.testing.assert_allclose(sol.points, points, atol=1e-5)


def test_finished_instance_tracks_release_their_masks() -> None:
    cfg = TrackerConfig(max_gap=2, min_frames=1)
    tracker = InstanceTracker(cfg)
    frames = 60
    for i in range(frames):
        mask = np.zeros((40, 260), bool)
        x = (i % 12) * 20  # a new blob each frame, back at a place only after 12 frames (> max_gap)
        mask[10:22, x : x + 12] = True
        ids = tracker.update(i, mask)
        assert ids[15, x + 5] == i + 1
    held = [t for t in tracker._tracks if t.mask.size]
    assert len(tracker._tracks) == frames and len(held) <= cfg.max_gap + 2
    lookup = tracker.finish()
    assert [r.id for r in tracker.records()] == list(range(1, frames + 1))
    assert [r.num_pixels for r in tracker.records()] == [144] * frames
    np.testing.assert_array_equal(lookup, np.arange(frames + 1))
