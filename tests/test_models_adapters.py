"""Tiny random-init adapters (smoke preset architectures): shapes, dtypes, units, bad input."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dv4d.models import registry
from dv4d.models.depth import DepthAnythingMetricAdapter, DepthProAdapter
from dv4d.models.detect import Owlv2Adapter
from dv4d.models.segment import SamAdapter


def frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def depth_pro() -> DepthProAdapter:
    adapter = DepthProAdapter(None)
    adapter.load("cpu", torch.float32)
    return adapter


def test_depth_pro_tiny_shapes_units(depth_pro: DepthProAdapter) -> None:
    out = depth_pro.predict(frames(2, 30, 50))
    assert out.depth.shape == (2, 30, 50) and out.depth.dtype == np.float32
    assert np.isfinite(out.depth).all() and (out.depth > 0).all()
    assert out.focal_px is not None and out.focal_px.shape == (2,) and out.focal_px.dtype == np.float64
    assert (out.focal_px > 0).all()
    assert out.metric is False and depth_pro.weights_id == "random-init"


def test_depth_pro_converts_canonical_inverse_depth_with_fov(depth_pro: DepthProAdapter) -> None:
    """90° horizontal FoV over W pixels gives f = W/2; canonical inverse depth c gives z = f / (c W)."""
    real_model = depth_pro.model
    canonical = torch.full((1, 16, 16), 0.25)
    depth_pro.model = lambda pixel_values: SimpleNamespace(
        predicted_depth=canonical, field_of_view=torch.tensor([90.0])
    )
    try:
        out = depth_pro.predict(frames(1, 40, 60))
    finally:
        depth_pro.model = real_model
    assert out.focal_px is not None
    assert out.focal_px[0] == pytest.approx(30.0 / math.tan(math.radians(45.0)))
    np.testing.assert_allclose(out.depth, 30.0 / (0.25 * 60.0), rtol=1e-5)


def test_depth_anything_tiny_has_no_focal() -> None:
    adapter = DepthAnythingMetricAdapter(None)
    adapter.load("cpu", torch.float32)
    out = adapter.predict(frames(3, 28, 42))
    assert out.depth.shape == (3, 28, 42) and out.depth.dtype == np.float32
    assert (out.depth >= 0).all() and out.focal_px is None and out.metric is False


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8)])
def test_depth_rejects_bad_frames(depth_pro: DepthProAdapter, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        depth_pro.predict(bad)


def test_owlv2_tiny_boxes_inside_image() -> None:
    adapter = Owlv2Adapter(None, threshold=0.0)
    adapter.load("cpu", torch.float32)
    out = adapter.predict(frames(2, 48, 64), ["red car", "person"])
    assert len(out.frames) == 2
    for det in out.frames:
        assert det.boxes.dtype == np.float32 and det.boxes.shape == (len(det.labels), 4)
        assert len(det.labels) <= adapter.max_per_frame
        assert set(det.labels) <= {"red car", "person"}
        assert ((det.scores >= 0) & (det.scores <= 1)).all()
        assert (det.boxes[:, 2] > det.boxes[:, 0]).all() and (det.boxes[:, 3] > det.boxes[:, 1]).all()
        assert (det.boxes[:, [0, 2]] <= 63).all() and (det.boxes[:, [1, 3]] <= 47).all()
    assert sum(len(d.labels) for d in out.frames) > 0
    assert all(len(d.labels) == 0 for d in adapter.predict(frames(2, 48, 64), []).frames)


def test_owlv2_cuts_queries_longer_than_its_text_positions() -> None:
    adapter = Owlv2Adapter(None, threshold=0.0)
    adapter.load("cpu", torch.float32)
    verbose = "a brown and white dog running across the green lawn towards the camera"
    out = adapter.predict(frames(1, 48, 64), [verbose, "cat"])
    assert set(out.frames[0].labels) <= {verbose, "cat"}


def test_sam_tiny_one_mask_per_box() -> None:
    adapter = SamAdapter(None)
    adapter.load("cpu", torch.float32)
    frame = frames(1, 40, 56)[0]
    out = adapter.predict(frame, np.array([[2, 3, 30, 35], [10, 5, 55, 39]], np.float32))
    assert out.masks.shape == (2, 40, 56) and out.masks.dtype == bool
    assert out.scores.shape == (2,)
    empty = adapter.predict(frame, np.zeros((0, 4)))
    assert empty.masks.shape == (0, 40, 56)


@pytest.mark.parametrize(
    ("name", "millions"),
    [("depth-pro", 952.0), ("depth-anything-v2-metric", 24.8), ("owlv2", 155.0), ("qwen2.5-vl", 3754.6),
     ("sam", 93.7)],
)  # fmt: skip
def test_full_size_random_architectures_match_the_checkpoints(name: str, millions: float) -> None:
    """Parameter counts of the published checkpoints (built on the meta device: no memory, no time)."""
    adapter = registry.create(name, None, full_size=True)
    assert adapter.weights_id == "random-init-full-size"
    adapter.load("meta", torch.bfloat16)
    model = adapter.predictor.model if name == "sam" else adapter.model
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.005)
    assert registry.create(name, None).weights_id == "random-init"


def test_owlv2_input_is_padded_square_and_area_shrunk() -> None:
    adapter = Owlv2Adapter(None)
    adapter.load("cpu", torch.float32)
    image = np.full((32, 128, 3), 200, np.uint8)
    (square,) = adapter._squares(image[None])
    assert square.shape == (64, 64, 3)  # the tiny network's input side
    assert (square[:16] == 200).all() and (square[17:] == 0).all()  # black padding below, as OWLv2 pads
