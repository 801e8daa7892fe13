"""Model-based tracking fused with the geometric motion mask, on a synthetic scene whose moving object's
mask is known: stable ids, mask IoU, dynamic flag and source, geometry-only instances."""

import hashlib

import cv2
import numpy as np
import pytest

from dv4d.models.base import Detections, DynamicObjectNames, FrameDetections, Masks
from dv4d.pipeline.flow import dis_flow
from dv4d.pipeline.metrics import mask_iou
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene
from dv4d.pipeline.tracking import (
    TrackedInstance,
    TrackingConfig,
    _box_iou,
    _Extent,
    _renumber,
    box_of,
    carry,
    iou,
    track_objects,
)

F = 14


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return render_scene(SceneConfig(width=128, height=96, num_frames=F, fps=30.0, seed=3, supersample=1))


@pytest.fixture(scope="module")
def step_flows(scene: SyntheticScene) -> list[np.ndarray | None]:
    flows: list[np.ndarray | None] = [dis_flow(scene.frames[i], scene.frames[i + 1]) for i in range(F - 1)]
    return [*flows, None]


class FakeModels:
    """A VLM naming ``names``; a detector boxing the scene's object (shifted by ``jitter`` px per call);
    a segmenter returning the true object pixels inside each box (``good``) or a wrong blob."""

    def __init__(self, scene: SyntheticScene, names: list[str], good_segmenter: bool = True, jitter: int = 0):
        self.scene, self.names, self.good, self.jitter = scene, names, good_segmenter, jitter
        self.index = {hashlib.sha1(f.tobytes()).hexdigest(): i for i, f in enumerate(scene.frames)}
        self.detect_calls: list[int] = []
        self.segment_calls = 0

    def _frame(self, frame: np.ndarray) -> int:
        return self.index[hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()]

    def dynamic_objects(self, keyframes: list[np.ndarray]) -> DynamicObjectNames:
        assert keyframes and all(k.dtype == np.uint8 for k in keyframes)
        return DynamicObjectNames(list(self.names), 1)

    def detect(self, frames: np.ndarray, names: list[str]) -> Detections:
        out = []
        for frame in frames:
            i = self._frame(frame)
            self.detect_calls.append(i)
            gt = self.scene.dynamic[i]
            shift = self.jitter * (len(self.detect_calls) % 2 * 2 - 1)
            box = box_of(gt) + shift if gt.any() else np.zeros((0, 4), np.float32)
            boxes = box.reshape(-1, 4).astype(np.float32)
            out.append(FrameDetections(boxes, np.full(len(boxes), 0.9, np.float32), [names[0]] * len(boxes)))
        return Detections(out)

    def segment(self, frame: np.ndarray, boxes: np.ndarray) -> Masks:
        self.segment_calls += 1
        gt = self.scene.dynamic[self._frame(frame)]
        masks = np.zeros((len(boxes), *gt.shape), bool)
        for k, (x0, y0, x1, y1) in enumerate(np.rint(boxes).astype(int)):
            if self.good:
                masks[k, max(y0 - 3, 0) : y1 + 4, max(x0 - 3, 0) : x1 + 4] = True
                masks[k] &= gt
            else:
                masks[k, :20, :20] = True
        return Masks(masks, np.ones(len(boxes), np.float32))


def run(scene: SyntheticScene, models: FakeModels, motion: list[tuple[np.ndarray, np.ndarray | None]],
        cfg: TrackingConfig) -> tuple[np.ndarray, list[dict[str, object]]]:  # fmt: skip
    out = np.zeros(scene.frames.shape[:3], np.uint16)
    keyframes = np.zeros(F, bool)
    keyframes[::5] = True
    _, instances = track_objects(models, scene.frames, keyframes, motion, out, cfg)
    return out, [inst.to_json() for inst in instances]


def test_detected_moving_object_keeps_one_id_and_its_mask(
    scene: SyntheticScene, step_flows: list[np.ndarray | None]
) -> None:
    models = FakeModels(scene, ["box"], jitter=2)
    motion = [(scene.dynamic[i], step_flows[i]) for i in range(F)]
    ids, records = run(scene, models, motion, TrackingConfig(detect_every=5))
    assert models.detect_calls == [0, 5, 10]  # periodic detection only
    assert len(records) == 1
    (record,) = records
    assert record["id"] == 1 and record["label"] == "box" and record["source"] == "detector"
    assert record["dynamic"] is True and float(record["moving_fraction"]) > 0.9  # type: ignore[arg-type]
    assert (record["first_frame"], record["last_frame"]) == (0, F - 1)
    assert record["num_pixels"] == int((ids == 1).sum())
    assert set(np.unique(ids).tolist()) == {0, 1}
    ious = [mask_iou(ids[i] == 1, scene.dynamic[i]) for i in range(F)]
    assert min(ious) > 0.85, ious


def test_flow_carries_the_track_when_sam_fails_between_detections(
    scene: SyntheticScene, step_flows: list[np.ndarray | None]
) -> None:
    models = FakeModels(scene, ["box"])
    good_segment = models.segment

    def segment(frame: np.ndarray, boxes: np.ndarray) -> Masks:
        """The true mask on detection frames, a wrong blob (rejected) on the others."""
        masks = good_segment(frame, boxes)
        if models._frame(frame) % 4 == 0:
            return masks
        return Masks(
            np.broadcast_to(np.eye(*masks.masks.shape[1:], dtype=bool), masks.masks.shape), masks.scores
        )

    models.segment = segment  # type: ignore[method-assign]
    no_motion = [(np.zeros(scene.dynamic.shape[1:], bool), step_flows[i]) for i in range(F)]
    out = np.zeros(scene.frames.shape[:3], np.uint16)
    _, instances = track_objects(models, scene.frames, np.eye(F, dtype=bool)[0], no_motion, out,
                                 TrackingConfig(detect_every=4))  # fmt: skip
    assert [inst.id for inst in instances] == [1]  # re-anchored on every detection, never a new id
    assert instances[0].dynamic is False and instances[0].moving_fraction == 0.0  # geometry saw no motion
    ious = [mask_iou(out[i] == 1, scene.dynamic[i]) for i in range(F)]
    assert min(ious) > 0.6, ious


def test_an_occluded_object_keeps_its_id(scene: SyntheticScene, step_flows: list[np.ndarray | None]) -> None:
    models = FakeModels(scene, ["box"])
    visible = scene.dynamic.copy()
    visible[6] = False  # hidden in frame 6: no detection, SAM finds nothing
    models.scene = SyntheticScene(scene.frames, scene.c2w, scene.K, scene.depth, visible, scene.instance_ids)
    motion = [(visible[i], step_flows[i]) for i in range(F)]
    ids, records = run(scene, models, motion, TrackingConfig(detect_every=1))
    assert [r["id"] for r in records] == [1] and records[0]["last_frame"] == F - 1
    assert not ids[6].any()
    assert all(mask_iou(ids[i] == 1, visible[i]) > 0.85 for i in range(F) if i != 6)


def test_geometry_only_motion_becomes_an_instance(
    scene: SyntheticScene, step_flows: list[np.ndarray | None]
) -> None:
    models = FakeModels(scene, [])
    motion = [(scene.dynamic[i], step_flows[i]) for i in range(F)]
    ids, records = run(scene, models, motion, TrackingConfig())
    assert models.detect_calls == [] and models.segment_calls == 0
    assert len(records) == 1 and records[0]["source"] == "geometry" and records[0]["dynamic"] is True
    assert all(mask_iou(ids[i] == records[0]["id"], scene.dynamic[i]) > 0.95 for i in range(F))


def test_geometric_motion_not_covered_by_detections_is_added(
    scene: SyntheticScene, step_flows: list[np.ndarray | None]
) -> None:
    extra = np.zeros(scene.dynamic.shape[1:], bool)
    extra[2:22, 100:124] = True  # a second moving region, away from the box, that no detector knows
    motion = [(scene.dynamic[i] | extra, step_flows[i]) for i in range(F)]
    blip = motion[5][0].copy()
    blip[80:95, 110:125] = True  # moving in one frame only: flicker, dropped, its id reused
    motion[5] = (blip, motion[5][1])
    ids, records = run(scene, FakeModels(scene, ["box"]), motion, TrackingConfig(detect_every=3))
    sources = {r["source"]: r for r in records}
    assert set(sources) == {"detector", "geometry"} and len(records) == 2
    assert set(np.unique(ids).tolist()) == {0, 1, 2} and not ids[5, 80:95, 110:125].any()
    geo_id = sources["geometry"]["id"]
    assert all(mask_iou(ids[i] == geo_id, extra) > 0.9 for i in range(F))
    assert not (scene.dynamic & extra).any()
    assert sources["detector"]["dynamic"] is True


def test_helpers_and_bad_input(scene: SyntheticScene) -> None:
    a = np.zeros((10, 10), bool)
    a[2:5, 3:7] = True
    assert iou(a, a) == 1.0 and iou(a, ~a) == 0.0 and iou(a & False, a & False) == 0.0
    np.testing.assert_array_equal(box_of(a), [3, 2, 6, 4])
    moved = carry(a, np.broadcast_to(np.array([2.0, 1.0]), (10, 10, 2)).copy())
    np.testing.assert_array_equal(moved, np.roll(np.roll(a, 1, axis=0), 2, axis=1))
    assert not carry(a, np.full((10, 10, 2), 50.0)).any()  # carried out of the frame
    assert not carry(a & False, np.zeros((10, 10, 2))).any()
    with pytest.raises(ValueError, match="at least one pixel"):
        box_of(a & False)
    with pytest.raises(ValueError, match="detect_every"):
        TrackingConfig(detect_every=0)
    with pytest.raises(ValueError, match="match_iou"):
        TrackingConfig(match_iou=0.0)
    with pytest.raises(ValueError, match="must match frames"):
        track_objects(
            FakeModels(scene, []), scene.frames, np.ones(F, bool), [], np.zeros((1, 2, 3), np.uint16)
        )


def ellipse(
    shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int], angle: float
) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    return mask.astype(bool)


def similarity_flow(shape: tuple[int, int], transform: np.ndarray) -> np.ndarray:
    """(H,W,2) flow of the 2x3 ``transform``: pixel (x, y) goes to ``transform @ (x, y, 1)``."""
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    pixels = np.stack([xs, ys, np.ones_like(xs)], axis=-1)
    return pixels @ transform.T - pixels[..., :2]


@pytest.mark.parametrize(
    ("centre", "axes"),
    [((60, 50), (30, 18)), ((8, 6), (25, 20)), ((120, 80), (22, 14))],  # inside, on the top-left corner,
)  # and across the bottom-right one (carried partly out of the frame)
def test_carry_on_the_box_equals_the_full_frame_warp(centre: tuple[int, int], axes: tuple[int, int]) -> None:
    shape = (96, 128)
    mask = ellipse(shape, centre, axes, 20.0)
    angle, scale = np.deg2rad(4.0), 1.03
    transform = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 2.6],
                          [scale * np.sin(angle), scale * np.cos(angle), -1.4]])  # fmt: skip
    flow = similarity_flow(shape, transform).astype(np.float32)
    full = cv2.warpAffine(mask.astype(np.uint8), transform, shape[::-1], flags=cv2.INTER_NEAREST).astype(bool)
    assert full.any() and (full != mask).any()
    for max_points in (10**9, 200, 30):  # every interior pixel, then grids of at most 200 and 30 of them
        moved = carry(mask, flow, max_points=max_points)
        assert moved.shape == shape and moved.dtype == bool
        assert np.count_nonzero(moved ^ full) <= 3, (max_points, np.count_nonzero(moved ^ full))


def test_carry_fit_on_a_grid_keeps_rejecting_outliers() -> None:
    """A quarter of the object's flow is wrong: the fit on a subsample finds the same transform."""
    shape = (96, 128)
    mask = ellipse(shape, (64, 48), (40, 30), 0.0)
    flow = np.zeros((*shape, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    rng = np.random.default_rng(0)
    wrong = mask & (rng.random(shape) < 0.25)
    flow[wrong] = rng.uniform(-15, 15, (int(wrong.sum()), 2))
    expected = np.roll(np.roll(mask, -2, axis=0), 3, axis=1)
    for max_points in (10**9, 100):
        np.testing.assert_array_equal(carry(mask, flow, max_points=max_points), expected)


def test_box_iou_is_the_iou_or_zero_under_its_floor() -> None:
    rng = np.random.default_rng(1)
    shape = (60, 80)
    masks = [ellipse(shape, (int(rng.integers(0, 80)), int(rng.integers(0, 60))),
                     (int(rng.integers(1, 30)), int(rng.integers(1, 20))), float(rng.uniform(0, 180)))
             for _ in range(25)] + [np.zeros(shape, bool)]  # fmt: skip
    checked = 0
    for a in masks:
        for b in masks:
            union = np.count_nonzero(a | b)
            exact = np.count_nonzero(a & b) / union if union else 0.0
            assert iou(a, b) == pytest.approx(exact)
            for floor in (0.1, 0.5, 0.9):
                found = _box_iou(a, b, _Extent.of(a), _Extent.of(b), floor)
                if exact >= floor:
                    assert found == pytest.approx(exact)
                    checked += 1
                else:
                    assert found in (0.0, pytest.approx(exact))
    assert checked > 25  # not only the pairs of a mask with itself


def test_renumber_rewrites_only_the_frames_holding_a_changed_id() -> None:
    out = np.zeros((5, 4, 4), np.uint16)
    out[:, 0, 0] = 1  # instance 1: every frame, keeps id 1
    out[2, 1, 1] = 2  # instance 2: one frame, dropped
    out[3:, 2, 2] = 3  # instance 3: frames 3-4, becomes 2
    spans = {1: (0, 4, 5), 2: (2, 2, 1), 3: (3, 4, 2), 4: (-1, -1, 0)}  # 4: never had pixels
    instances = [TrackedInstance(i, "x", "detector", first, last, num_frames=n)
                 for i, (first, last, n) in spans.items()]  # fmt: skip
    expected = out.copy()
    expected[2, 1, 1] = 0
    expected[3:, 2, 2] = 2
    kept = _renumber(instances, out, min_frames=2)
    assert [(inst.id, inst.first_frame) for inst in kept] == [(1, 0), (2, 3)]
    np.testing.assert_array_equal(out, expected)
