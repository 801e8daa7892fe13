"""Instance tracking on analytic masks: discs that cross, vanish and reappear, with known identities."""

import numpy as np
import pytest

from dv4d.pipeline.instances import InstanceRecord, InstanceTracker, TrackerConfig

H, W = 80, 200
YS, XS = np.mgrid[0:H, 0:W]


def disc(cx: float, cy: float, r: float = 9.0) -> np.ndarray:
    return (XS - cx) ** 2 + (YS - cy) ** 2 <= r**2


def run(
    tracker: InstanceTracker, masks: list[np.ndarray], flows: list[np.ndarray | None] | None = None
) -> np.ndarray:
    flows = flows or [None] * len(masks)
    return np.stack([tracker.update(f, m, flows[f]) for f, m in enumerate(masks)])


def check_records(ids: np.ndarray, records: list[InstanceRecord]) -> None:
    """Ids 1..N contiguous; each record's span and pixel count match the id maps exactly."""
    assert ids.dtype == np.uint16
    assert [r.id for r in records] == list(range(1, len(records) + 1))
    assert set(np.unique(ids)) - {0} == {r.id for r in records}
    for r in records:
        frames = np.nonzero((ids == r.id).any(axis=(1, 2)))[0]
        assert (r.first_frame, r.last_frame) == (frames[0], frames[-1])
        assert r.num_pixels == int((ids == r.id).sum())


def test_crossing_discs_keep_their_ids() -> None:
    # A moves right, B moves left on the same row: they merge into one blob for several frames.
    num = 30
    a = [disc(30 + 5 * f, 40) for f in range(num)]
    b = [disc(170 - 5 * f, 40) for f in range(num)]
    ids = run(InstanceTracker(TrackerConfig()), [a[f] | b[f] for f in range(num)])
    merged = [f for f in range(num) if (a[f] & b[f]).any() or (abs((30 + 5 * f) - (170 - 5 * f)) < 20)]
    assert len(merged) >= 3
    id_a, id_b = ids[0][a[0]][0], ids[0][b[0]][0]
    assert {int(id_a), int(id_b)} == {1, 2}
    for f in range(num):
        if f in merged:
            continue
        assert (ids[f][a[f]] == id_a).all(), f
        assert (ids[f][b[f]] == id_b).all(), f
    # Through the merge each disc's centre pixel still carries its own id (unless the centres coincide).
    for f in merged:
        if abs((30 + 5 * f) - (170 - 5 * f)) < 10:
            continue
        assert ids[f][40, 30 + 5 * f] == id_a and ids[f][40, 170 - 5 * f] == id_b, f


def test_vanish_and_reappear_within_and_beyond_gap() -> None:
    cfg = TrackerConfig(max_gap=3)
    masks = []
    for f in range(20):
        m = disc(20 + 3 * f, 25)  # A: always visible
        if not 5 <= f < 8 and not 10 <= f < 16:  # B: hidden 3 frames (kept), then 6 frames (lost)
            m |= disc(40 + 4 * f, 60)
        masks.append(m)
    tracker = InstanceTracker(cfg)
    ids = run(tracker, masks)
    assert ids[4][60, 40 + 16] == 2 and ids[8][60, 40 + 32] == 2  # same id after a 3-frame gap
    assert ids[16][60, 40 + 64] == 3  # a 6-frame gap starts a new track
    assert (ids[:, 25, :][ids[:, 25, :] > 0] == 1).all()
    records = tracker.records()
    assert [(r.first_frame, r.last_frame) for r in records] == [(0, 19), (0, 9), (16, 19)]
    assert all(r.label == "object" and r.dynamic and r.caption is None for r in records)
    check_records(ids, records)


def test_flow_warping_follows_a_fast_object() -> None:
    # 25 px per frame, radius 9: consecutive masks do not overlap at all.
    masks = [disc(20 + 25 * f, 40) for f in range(6)]
    flow = np.zeros((H, W, 2), dtype=np.float32)
    flow[..., 0] = 25.0
    with_flow = run(InstanceTracker(TrackerConfig()), masks, [None] + [flow] * 5)
    assert set(np.unique(with_flow)) == {0, 1}
    without = InstanceTracker(TrackerConfig())
    run(without, masks)
    assert len(without.records()) > 1  # frame 1 cannot be matched without the flow (no velocity yet)


def test_labelled_proposals_keep_ids_when_proposal_numbers_change() -> None:
    tracker = InstanceTracker(TrackerConfig())
    out = []
    for f in range(8):
        proposals = np.zeros((H, W), dtype=np.int32)
        dog, cat = disc(40 + 2 * f, 40), disc(150 - 2 * f, 40)
        # The segmenter numbers its proposals differently on odd frames.
        dog_value, cat_value = (7, 3) if f % 2 else (3, 7)
        proposals[dog], proposals[cat] = dog_value, cat_value
        out.append(tracker.update(f, proposals, labels={dog_value: "dog", cat_value: "cat"}))
    ids = np.stack(out)
    records = tracker.records()
    assert [(r.id, r.label) for r in records] == [(1, "dog"), (2, "cat")]
    assert all(ids[f, 40, 40 + 2 * f] == 1 and ids[f, 40, 150 - 2 * f] == 2 for f in range(8))
    check_records(ids, records)
    assert records[0].to_json() == {
        "id": 1, "label": "dog", "dynamic": True, "first_frame": 0, "last_frame": 7,
        "num_pixels": records[0].num_pixels, "caption": None,
    }  # fmt: skip


def test_small_regions_are_dropped() -> None:
    tracker = InstanceTracker(TrackerConfig(min_area=100))
    mask = disc(50, 40) | disc(150, 40, r=3)  # 253 px and 29 px
    ids = tracker.update(0, mask)
    assert ids[40, 150] == 0 and ids[40, 50] == 1
    assert len(tracker.records()) == 1 and tracker.records()[0].num_pixels == int(disc(50, 40).sum())


def test_bad_inputs() -> None:
    tracker = InstanceTracker(TrackerConfig())
    tracker.update(3, np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="increasing"):
        tracker.update(3, np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="mask must be"):
        tracker.update(4, np.zeros((H, W + 1), bool))
    with pytest.raises(ValueError, match="flow_prev_to_cur"):
        tracker.update(4, np.zeros((H, W), bool), np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match="integer"):
        tracker.update(4, np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match="min_iou"):
        TrackerConfig(min_iou=0.0)


def test_skipped_frames_static_proposals_and_flow_between_calls() -> None:
    """Keyframes only (0, 3, 6, ...): the flow given is from the previous call's frame, velocities count
    frame numbers; proposals marked static give a static record."""
    tracker = InstanceTracker(TrackerConfig(max_gap=2))
    flow = np.zeros((H, W, 2), dtype=np.float32)
    flow[..., 0] = 30.0
    ids = [tracker.update(f, disc(20 + 10 * f, 40).astype(np.uint8), flow if f else None, dynamic=False)
           for f in range(0, 18, 3)]  # fmt: skip
    assert all(set(np.unique(i)) == {0, 1} for i in ids)
    record = tracker.records()[0]
    assert (record.first_frame, record.last_frame, record.dynamic) == (0, 15, False)
    assert record.label == "object"
    with pytest.raises(ValueError, match="labels need an integer"):
        tracker.update(20, np.zeros((H, W), bool), labels={1: "dog"})


def test_coasting_track_shifted_out_of_frame_vanishes() -> None:
    from dv4d.pipeline.instances import _shift

    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    for dx, dy in ((31, 0), (-40, 0), (0, 25), (0, -20), (100, 100)):
        assert not _shift(mask, dx, dy).any()
    moved = _shift(mask, 3, -2)
    assert moved[3:8, 8:13].all() and moved.sum() == mask.sum()


def test_fragments_of_one_object_become_one_instance() -> None:
    """An object first seen as two pieces (two tracks), then whole: the whole blob continues one track
    (the pieces never matched alone long enough to be split like crossing objects), and ``finish``
    drops the piece seen in too few frames and renumbers."""
    cfg = TrackerConfig(min_frames=3, group_fraction=0.0)
    masks = []
    for f in range(8):
        whole = disc(60 + 3 * f, 40, r=14)
        if f < 2:
            whole &= np.abs(XS - (60 + 3 * f)) > 4  # two halves 9 px apart
        masks.append(whole)
    tracker = InstanceTracker(cfg)
    ids = run(tracker, masks)
    assert len(tracker.records()) == 2 and set(np.unique(ids[0])) == {0, 1, 2}
    assert all(len(set(np.unique(ids[f])) - {0}) == 1 for f in range(2, 8))
    lookup = tracker.finish()
    final = lookup[ids]
    assert lookup.dtype == np.uint16 and lookup[0] == 0
    records = tracker.records()
    assert len(records) == 1 and (records[0].first_frame, records[0].last_frame) == (0, 7)
    assert (final[2:][np.stack(masks[2:])] == 1).all()
    check_records(final, records)


def test_finish_drops_flicker_and_keeps_short_videos() -> None:
    masks = [disc(40 + 2 * f, 40) for f in range(6)]
    masks[3] = masks[3] | disc(150, 40)  # a one-frame false detection
    tracker = InstanceTracker(TrackerConfig(min_frames=2))
    raw = run(tracker, masks)
    ids = tracker.finish()[raw]
    assert [(r.id, r.first_frame, r.last_frame) for r in tracker.records()] == [(1, 0, 5)]
    assert ids[3][40, 150] == 0
    check_records(ids, tracker.records())
    short = InstanceTracker(TrackerConfig(min_frames=3))
    raw = run(short, masks[:2])
    ids = short.finish()[raw]  # two frames: nothing can be seen three times
    assert len(short.records()) == 1 and ids[1][40, 42] == 1


def test_nearby_pieces_are_grouped() -> None:
    pieces = disc(50, 40) & (np.abs(XS - 50) > 1)  # two halves 3 px apart
    grouped = InstanceTracker(TrackerConfig(group_fraction=0.03)).update(0, pieces)  # 6 px
    assert set(np.unique(grouped)) == {0, 1}
    apart = InstanceTracker(TrackerConfig(group_fraction=0.0)).update(0, pieces)
    assert set(np.unique(apart)) == {0, 1, 2}
    with pytest.raises(ValueError, match="min_frames"):
        TrackerConfig(min_frames=0)
