"""Classical dense depth from flow triangulation against exact synthetic depth."""

import numpy as np
import pytest

from dv4d.pipeline.depth import densify_depth
from dv4d.pipeline.geometry import GeometryConfig, GeometryResult, estimate_geometry
from dv4d.pipeline.keyframes import KeyframeConfig, select_keyframes
from dv4d.pipeline.metrics import depth_errors
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return render_scene(SceneConfig(num_frames=20, seed=4))


def truth_geometry(scene: SyntheticScene) -> GeometryResult:
    """GeometryResult holding the exact poses (world = first camera), in metres."""
    c2w = np.linalg.inv(scene.c2w[0]) @ scene.c2w
    h, w = scene.depth.shape[1:]
    ys, xs = np.mgrid[0:h:8, 0:w:8].astype(np.float64)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(scene.K).T
    points = (rays * scene.depth[0, ::8, ::8][..., None]).reshape(-1, 3)
    every = np.ones(len(c2w), bool)
    return GeometryResult(c2w, scene.K, every, points, np.zeros(points.shape, np.uint8), 0.0, 1.0, [], every)


def test_depth_with_true_poses_is_metric_and_accurate(scene: SyntheticScene) -> None:
    geo = truth_geometry(scene)
    for index in (0, 10, 19):
        depth = densify_depth(scene.frames, geo, index)
        assert depth.shape == (120, 160) and depth.dtype == np.float32
        assert np.all(depth >= 0) and np.isfinite(depth).all()
        static = ~scene.dynamic[index]
        absrel, delta1, coverage = depth_errors(
            np.where(static, depth, 0), scene.depth[index], median_scale=False
        )
        assert absrel < 0.05 and delta1 > 0.95
        assert coverage > 0.45
        # The moving box breaks the epipolar constraint: most of its pixels stay invalid.
        if scene.dynamic[index].sum() > 100:
            assert (depth[scene.dynamic[index]] > 0).mean() < 0.5


def test_depth_with_estimated_geometry(scene: SyntheticScene) -> None:
    keys = select_keyframes(scene.frames, KeyframeConfig())
    geo = estimate_geometry(scene.frames, keys, scene.K, GeometryConfig())
    depth = np.stack([densify_depth(scene.frames, geo, i) for i in (2, 9, 17)])
    absrel, _, coverage = depth_errors(depth, scene.depth[[2, 9, 17]], median_scale=True)
    assert absrel < 0.04 and coverage > 0.4


def test_no_translation_gives_no_depth(scene: SyntheticScene) -> None:
    geo = truth_geometry(scene)
    geo.c2w = np.broadcast_to(np.eye(4), geo.c2w.shape).copy()
    assert not densify_depth(scene.frames, geo, 5).any()
    single = densify_depth(scene.frames[:1], GeometryResult(geo.c2w[:1], scene.K, np.ones(1, bool),
                           geo.points, geo.colors, 0.0, 1.0, [], np.ones(1, bool)), 0)  # fmt: skip
    assert not single.any()
    with pytest.raises(IndexError):
        densify_depth(scene.frames, geo, 20)
