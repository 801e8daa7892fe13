"""Camera captions of analytic trajectories with known distances, angles and speeds (OpenCV axes)."""

import json

import cv2
import numpy as np
import pytest

from dv4d.pipeline.captions import CameraCaption, CaptionConfig, camera_caption, captions_json


def rot(axis: list[float], degrees: float) -> np.ndarray:
    vec = np.asarray(axis, dtype=np.float64) * np.radians(degrees)
    return np.asarray(cv2.Rodrigues(vec)[0])


def trajectory(centres: np.ndarray, rotations: list[np.ndarray]) -> np.ndarray:
    c2w = np.tile(np.eye(4), (len(centres), 1, 1))
    c2w[:, :3, 3] = centres
    c2w[:, :3, :3] = rotations
    return c2w


def straight(direction: list[float], distance: float, num: int = 31) -> np.ndarray:
    """Constant orientation (identity), moving ``distance`` along ``direction`` (camera = world axes)."""
    centres = np.linspace(0.0, 1.0, num)[:, None] * distance * np.asarray(direction, dtype=np.float64)
    return trajectory(centres, [np.eye(3)] * num)


def test_dolly_forward_with_speed() -> None:
    cap = camera_caption(straight([0, 0, 1], 1.8), np.linspace(0.0, 3.0, 31), metric=True)
    assert cap.text == "dolly forward 1.8 m at 0.6 m/s"
    assert cap.source == "trajectory"
    assert cap.stats["unit"] == "m"
    assert cap.stats["forward"] == pytest.approx(1.8)
    assert cap.stats["path_length"] == pytest.approx(1.8)
    assert cap.stats["mean_speed"] == pytest.approx(0.6)
    assert cap.stats["duration_s"] == pytest.approx(3.0)
    assert abs(float(cap.stats["right"])) < 1e-9 and abs(float(cap.stats["pan_deg"])) < 1e-9


@pytest.mark.parametrize(
    ("direction", "phrase", "key", "sign"),
    [
        ([0, 0, -1], "dolly back", "forward", -1),
        ([1, 0, 0], "truck right", "right", 1),
        ([-1, 0, 0], "truck left", "right", -1),
        ([0, -1, 0], "pedestal up", "up", 1),  # OpenCV y points down
        ([0, 1, 0], "pedestal down", "up", -1),
    ],
)
def test_translation_directions(direction: list[float], phrase: str, key: str, sign: int) -> None:
    cap = camera_caption(straight(direction, 0.5), np.linspace(0.0, 2.0, 31), metric=False)
    assert cap.text == f"{phrase} 0.5 units at 0.25 units/s"
    assert cap.stats[key] == pytest.approx(sign * 0.5)


@pytest.mark.parametrize(
    ("axis", "degrees", "phrase", "key"),
    [
        ([0, -1, 0], 35.0, "pan left 35°", "pan_deg"),  # about the up axis (-y): forward turns to -x
        ([0, 1, 0], 35.0, "pan right 35°", "pan_deg"),
        ([1, 0, 0], 12.0, "tilt up 12°", "tilt_deg"),  # about +x: forward turns to -y (up)
        ([-1, 0, 0], 12.0, "tilt down 12°", "tilt_deg"),
        ([0, 0, 1], 8.0, "roll clockwise 8°", "roll_deg"),  # about +z: right (+x) turns to +y (down)
    ],
)
def test_rotations_on_a_tripod(axis: list[float], degrees: float, phrase: str, key: str) -> None:
    num = 25
    rotations = [rot(axis, degrees * k / (num - 1)) for k in range(num)]
    cap = camera_caption(trajectory(np.zeros((num, 3)), rotations), np.arange(num) / 24.0, metric=True)
    assert cap.text == phrase
    sign = 1 if phrase.split()[1] in ("left", "up", "clockwise") else -1
    assert cap.stats[key] == pytest.approx(sign * degrees)


def test_pan_direction_matches_the_view() -> None:
    """Independent check of 'left': after a pan left the camera looks towards the first camera's -x."""
    c2w = trajectory(np.zeros((2, 3)), [np.eye(3), rot([0, -1, 0], 20.0)])
    forward_after = c2w[1, :3, :3] @ np.array([0.0, 0.0, 1.0])
    assert forward_after[0] < 0
    assert camera_caption(c2w, np.array([0.0, 1.0]), metric=True).text == "pan left 20°"


def test_curved_dolly_with_pan() -> None:
    """Walking a quarter circle while always looking along the path: forward arc length, pan left 90°."""
    num, radius = 91, 2.0
    angles = np.radians(np.linspace(0.0, 90.0, num))
    # Turning left about up: forward z goes to -x; the centre of the circle is at (-radius, 0, 0).
    centres = np.stack([radius * (np.cos(angles) - 1.0), np.zeros(num), radius * np.sin(angles)], axis=1)
    rotations = [rot([0, -1, 0], np.degrees(a)) for a in angles]
    cap = camera_caption(trajectory(centres, rotations), np.linspace(0.0, 10.0, num), metric=True)
    arc = radius * np.pi / 2
    assert cap.stats["forward"] == pytest.approx(arc, rel=1e-3)
    assert abs(float(cap.stats["right"])) < 0.01 * arc
    assert cap.stats["pan_deg"] == pytest.approx(90.0)
    assert cap.text == f"dolly forward {arc:.2f} m at {arc / 10:.2f} m/s, pan left 90°"


def test_static_and_jitter() -> None:
    num = 30
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=0.002, size=(num, 3))
    rotations = [rot(rng.normal(size=3).tolist(), 0.1) for _ in range(num)]
    cap = camera_caption(trajectory(centres, rotations), np.arange(num) / 30.0, metric=True)
    assert cap.text == "static camera"
    single = camera_caption(np.eye(4)[None], np.zeros(1), metric=False)
    assert single.text == "static camera" and single.stats["path_length"] == 0.0


def test_minor_axes_are_not_claimed() -> None:
    # 1 m forward with 0.1 m drift to the right: the drift is under 30 % of the main motion.
    c2w = trajectory(np.array([[0.0, 0, 0], [0.1, 0, 1.0]]), [np.eye(3)] * 2)
    assert camera_caption(c2w, np.array([0.0, 2.0]), metric=True).text.startswith("dolly forward 1 m at")
    c2w = trajectory(np.array([[0.0, 0, 0], [0.5, 0, 1.0]]), [np.eye(3)] * 2)
    text = camera_caption(c2w, np.array([0.0, 2.0]), metric=True, cfg=CaptionConfig()).text
    assert text.startswith("dolly forward 1 m and truck right 0.5 m at")


def test_captions_json_shape() -> None:
    cap = camera_caption(straight([0, 0, 1], 1.0), np.linspace(0.0, 1.0, 31), metric=True)
    doc = captions_json(None, cap, {2: "a red ball", 1: "a dog"})
    assert doc == {
        "scene": None,
        "camera": {"text": cap.text, "source": "trajectory", "stats": cap.stats},
        "objects": {"1": "a dog", "2": "a red ball"},
    }
    assert json.loads(json.dumps(doc)) == doc
    assert isinstance(cap, CameraCaption)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="c2w"):
        camera_caption(np.zeros((3, 3, 3)), np.zeros(3), metric=True)
    with pytest.raises(ValueError, match="timestamps"):
        camera_caption(straight([0, 0, 1], 1.0, num=3), np.zeros(2), metric=True)
    with pytest.raises(ValueError, match="decrease"):
        camera_caption(straight([0, 0, 1], 1.0, num=3), np.array([0.0, 2.0, 1.0]), metric=True)
