"""Stable object instances from the models (VLM names, detector boxes, SAM masks), fused with the
geometric motion mask.

The VLM names the moving objects once per video (on keyframes). Then, frame by frame:

1. each live track's mask is carried to the frame by the similarity transform fit to the previous
   frame's step flow inside it (``carry``);
2. on detection frames (frame 0 and every ``detect_every`` frames) the detector boxes the names;
3. SAM segments, in one call per frame (one image encoding), the detection boxes and the box of every
   carried mask (re-prompting); a track takes SAM's mask when it agrees with the carried one
   (IoU >= ``reprompt_iou``) or is empty (the object is hidden: the track is lost until a detection
   matches its last mask), otherwise it keeps the carried mask (SAM jumped to something else);
4. detection masks overlapping each other by ``merge_iou`` are merged; each is then matched to a track of
   the same label greedily by IoU >= ``match_iou`` (the track is re-anchored on the detection mask), the
   others start new tracks while fewer than ``max_tracks`` are live; tracks of one label that come to
   overlap by ``merge_iou`` are merged into the older one;
5. the geometric motion mask of the frame (``dv4d.pipeline.motion``) counts the moving pixels of every
   track; moving regions that no track covers are tracked on their own (``InstanceTracker``) and become
   instances with source ``geometry``.

A track whose mask stays under ``min_area`` pixels for more than ``max_gap`` frames ends. A detector
instance is dynamic when at least ``dynamic_fraction`` of its pixels (over all its frames) moved per the
geometric mask; a geometry instance always is. Detector tracks are painted in id order, geometry
instances only where no detector track is. At the end, instances with pixels in fewer than
``min_frames`` frames are dropped (flicker) and the rest renumbered 1..N in order of first appearance
(a second pass over ``out``); 0 = background.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from dv4d.models.base import Detections, DynamicObjectNames, Masks
from dv4d.pipeline.instances import InstanceRecord, InstanceTracker, TrackerConfig

GEOMETRY_LABEL = "moving object"
"""Label of instances found only by the geometric motion mask (no name from the VLM)."""


class ObjectModels(Protocol):
    """The model calls tracking needs (``dv4d.models.suite.ModelSuite`` provides them)."""

    def dynamic_objects(self, keyframes: list[np.ndarray]) -> DynamicObjectNames: ...

    def detect(self, frames: np.ndarray, names: list[str]) -> Detections: ...

    def segment(self, frame: np.ndarray, boxes: np.ndarray) -> Masks: ...


@dataclass(frozen=True)
class TrackingConfig:
    """Rules of ``track_objects``."""

    detect_every: int = 10
    """Frames between detector passes (frame 0 always has one); SAM re-prompting carries tracks between."""
    match_iou: float = 0.3
    """Mask IoU for a detection to continue a track of the same label."""
    reprompt_iou: float = 0.5
    """Mask IoU between SAM's re-prompted mask and the flow-carried mask for SAM's to be taken."""
    merge_iou: float = 0.7
    """Mask IoU above which two detections, or two tracks of one label, are the same object."""
    max_tracks: int = 16
    """Most detector tracks alive at once (new detections wait for a free slot)."""
    max_gap: int = 5
    """Frames a track may stay lost (mask under ``min_area``) before it ends."""
    min_area: int = 64
    """Pixels a mask or a moving region needs to count."""
    dynamic_fraction: float = 0.2
    """Fraction of a detector instance's pixels flagged moving by geometry for it to be dynamic."""
    min_frames: int = 3
    """Instances with pixels in fewer frames than this (or than the video has) are dropped (flicker)."""

    def __post_init__(self) -> None:
        if min(self.detect_every, self.max_tracks, self.min_area, self.min_frames) < 1 or self.max_gap < 0:
            raise ValueError("detect_every, max_tracks, min_area and min_frames must be >= 1, max_gap >= 0")
        for name in ("match_iou", "reprompt_iou", "merge_iou", "dynamic_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass
class TrackedInstance:
    """One instance over the video (an entry of ``instances.json``)."""

    id: int
    """Instance id in ``instances.npy`` (1..N)."""
    label: str
    """The VLM's name, or ``GEOMETRY_LABEL``."""
    source: str
    """``"detector"`` (VLM name + detector + SAM) or ``"geometry"`` (geometric motion mask only)."""
    first_frame: int = -1
    """First frame where it has pixels (-1 until it has some)."""
    last_frame: int = -1
    """Last frame where it has pixels."""
    num_pixels: int = 0
    """Pixels carrying this id in ``instances.npy``, summed over all frames."""
    num_frames: int = 0
    """Frames in which it has pixels."""
    moving_pixels: int = 0
    """Of those, pixels the geometric motion mask flagged as moving."""
    dynamic_fraction: float = 0.2
    """Threshold on ``moving_pixels / num_pixels`` for a detector instance to be dynamic."""
    caption: str | None = None
    """Object caption, filled by the captions stage."""

    @property
    def moving_fraction(self) -> float:
        """Fraction of its pixels that moved per the geometric motion mask."""
        return self.moving_pixels / self.num_pixels if self.num_pixels else 0.0

    @property
    def dynamic(self) -> bool:
        """Whether it moves on its own (see the module docstring)."""
        return self.source == "geometry" or self.moving_fraction >= self.dynamic_fraction

    def to_json(self) -> dict[str, Any]:
        """The ``InstanceRecord`` fields, then ``source`` and ``moving_fraction``."""
        record = InstanceRecord(self.id, self.label, self.dynamic, self.first_frame, self.last_frame,
                                self.num_pixels, self.caption)  # fmt: skip
        return {**record.to_json(), "source": self.source, "moving_fraction": round(self.moving_fraction, 4)}


@dataclass
class _Track:
    instance: TrackedInstance
    mask: np.ndarray
    """(H,W) bool mask in the frame last processed (may be empty while lost)."""
    memory: np.ndarray
    """(H,W) bool last mask of at least ``min_area`` pixels: where a lost track is looked for."""
    lost: int = 0
    """Consecutive frames with a mask under ``min_area``."""


@dataclass
class _State:
    cfg: TrackingConfig
    instances: list[TrackedInstance] = field(default_factory=list)
    tracks: list[_Track] = field(default_factory=list)
    geometry_ids: dict[int, int] = field(default_factory=dict)
    """``InstanceTracker`` id of a geometry-only region -> instance id."""

    def new_instance(self, label: str, source: str) -> TrackedInstance:
        if len(self.instances) == np.iinfo(np.uint16).max:
            raise ValueError("more than 65535 instances: ids no longer fit in uint16")
        instance = TrackedInstance(len(self.instances) + 1, label, source)
        instance.dynamic_fraction = self.cfg.dynamic_fraction
        self.instances.append(instance)
        return instance


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H,W) bool masks (0 when both are empty)."""
    a8, b8 = a.view(np.uint8), b.view(np.uint8)
    inter = cv2.countNonZero(cv2.bitwise_and(a8, b8))
    return inter / (cv2.countNonZero(a8) + cv2.countNonZero(b8) - inter) if inter else 0.0


def box_of(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 ``x0, y0, x1, y1`` pixel box around a non-empty (H,W) bool mask."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0:
        raise ValueError("box_of needs a mask with at least one pixel")
    return np.array([x, y, x + w - 1, y + h - 1], np.float32)


FIT_POINTS = 1000
"""Most interior pixels ``carry`` fits its transform to (a regular grid over the mask beyond that)."""


def carry(mask: np.ndarray, flow: np.ndarray, max_points: int = FIT_POINTS) -> np.ndarray:
    """``mask`` (H,W) bool moved to the next frame by the similarity transform (rotation, scale,
    translation) that best fits, robustly (RANSAC), the ``flow`` (H,W,2 pixels) of its interior pixels;
    the flow's median shift when no transform fits. Boundary pixels are left out of the fit (their flow
    mixes object and background), so the shape holds over many frames; pixels carried out of the frame are
    dropped. The fit takes every ``s``-th interior pixel along each axis, ``s`` the smallest step that leaves
    at most ``max_points``; only the mask's bounding box (and its image) is read and written."""
    height, width = mask.shape
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    moved = np.zeros_like(mask)
    if w == 0:
        return moved
    # 2 px margin: the 5x5 erosion of the crop then equals the full frame's
    x0, y0, x1, y1 = max(x - 2, 0), max(y - 2, 0), min(x + w + 2, width), min(y + h + 2, height)
    crop = mask[y0:y1, x0:x1].view(np.uint8)
    inner = cv2.erode(crop, np.ones((5, 5), np.uint8))
    count = cv2.countNonZero(inner)
    if count < 8:
        inner, count = crop, cv2.countNonZero(crop)
    step = max(1, math.ceil(math.sqrt(count / max_points)))
    ys, xs = np.nonzero(inner[::step, ::step])
    xs, ys = xs * step + x0, ys * step + y0
    f = flow[ys, xs]
    ok = np.isfinite(f).all(axis=1)
    if not ok.any():
        return moved
    src = np.stack([xs[ok], ys[ok]], axis=1).astype(np.float32)
    dst = src + f[ok].astype(np.float32)
    transform = None
    if len(src) >= 3:
        transform, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if transform is None:
        dx, dy = np.median(dst - src, axis=0)
        transform = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    # the box's image (its pixel edges, 1 px slack for nearest-neighbour rounding), clipped to the frame
    (a, b, tx), (c, d, ty) = transform.tolist()
    corners = [(u, v) for u in (x - 0.5, x + w - 0.5) for v in (y - 0.5, y + h - 0.5)]
    image_x = [a * u + b * v + tx for u, v in corners]
    image_y = [c * u + d * v + ty for u, v in corners]
    lo_x, lo_y = max(math.floor(min(image_x)) - 1, 0), max(math.floor(min(image_y)) - 1, 0)
    hi_x, hi_y = min(math.ceil(max(image_x)) + 2, width), min(math.ceil(max(image_y)) + 2, height)
    if hi_x <= lo_x or hi_y <= lo_y:
        return moved
    local = np.array([[a, b, tx + a * x0 + b * y0 - lo_x], [c, d, ty + c * x0 + d * y0 - lo_y]])
    warped = cv2.warpAffine(crop, local, (hi_x - lo_x, hi_y - lo_y), flags=cv2.INTER_NEAREST)
    moved[lo_y:hi_y, lo_x:hi_x] = warped.view(bool)
    return moved


@dataclass(frozen=True)
class _Extent:
    """Pixel count and bounding box ``[x0, x1) x [y0, y1)`` of an (H,W) bool mask."""

    area: int
    x0: int
    y0: int
    x1: int
    y1: int

    @staticmethod
    def of(mask: np.ndarray) -> "_Extent":
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        return _Extent(cv2.countNonZero(mask.view(np.uint8)), x, y, x + w, y + h)


def _box_iou(a: np.ndarray, b: np.ndarray, extent_a: _Extent, extent_b: _Extent, floor: float) -> float:
    """``iou(a, b)``, or 0 when the masks' ``_Extent`` show it is under ``floor``; reads only the overlap
    of the two boxes."""
    x0, y0 = max(extent_a.x0, extent_b.x0), max(extent_a.y0, extent_b.y0)
    x1, y1 = min(extent_a.x1, extent_b.x1), min(extent_a.y1, extent_b.y1)
    most = min(extent_a.area, extent_b.area, max(x1 - x0, 0) * max(y1 - y0, 0))  # intersection bound
    if not most or most < floor * (extent_a.area + extent_b.area - most):
        return 0.0
    both = cv2.bitwise_and(a[y0:y1, x0:x1].view(np.uint8), b[y0:y1, x0:x1].view(np.uint8))
    inter = cv2.countNonZero(both)
    return inter / (extent_a.area + extent_b.area - inter) if inter else 0.0


def _merged_detections(masks: np.ndarray, scores: np.ndarray, labels: list[str], cfg: TrackingConfig
                       ) -> list[tuple[np.ndarray, str]]:  # fmt: skip
    """Detection masks, best score first, each overlapping ones of its label merged into it."""
    kept: list[tuple[np.ndarray, str, _Extent]] = []
    for k in np.argsort(-scores, kind="stable"):
        mask, label = masks[k], labels[k]
        extent = _Extent.of(mask)
        if extent.area < cfg.min_area:
            continue
        for n, (other, other_label, other_extent) in enumerate(kept):
            if (
                other_label == label
                and _box_iou(mask, other, extent, other_extent, cfg.merge_iou) >= cfg.merge_iou
            ):
                merged = other | mask
                kept[n] = (merged, label, _Extent.of(merged))
                break
        else:
            kept.append((mask, label, extent))
    return [(mask, label) for mask, label, _ in kept]


def _match(state: _State, detections: list[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
    """Re-anchor tracks on the detections they match; returns the unmatched detections."""
    found = [_Extent.of(mask) for mask, _ in detections]
    known = [track.memory if track.lost else track.mask for track in state.tracks]
    extents = [_Extent.of(mask) for mask in known]
    pairs = sorted(
        ((_box_iou(mask, known[t], found[d], extents[t], state.cfg.match_iou), d, t)
         for d, (mask, label) in enumerate(detections)
         for t, track in enumerate(state.tracks) if track.instance.label == label),
        reverse=True,
    )  # fmt: skip
    used_d: set[int] = set()
    used_t: set[int] = set()
    for score, d, t in pairs:
        if score < state.cfg.match_iou or d in used_d or t in used_t:
            continue
        used_d.add(d)
        used_t.add(t)
        state.tracks[t].mask = detections[d][0]
    return [det for d, det in enumerate(detections) if d not in used_d]


def _merge_tracks(state: _State) -> None:
    """Tracks of one label whose masks overlap by ``merge_iou``: the younger one ends."""
    ended: set[int] = set()
    extents = [_Extent.of(track.mask) for track in state.tracks]
    for a, older in enumerate(state.tracks):
        for b in range(a + 1, len(state.tracks)):
            younger = state.tracks[b]
            if b in ended or a in ended or older.instance.label != younger.instance.label:
                continue
            merge = state.cfg.merge_iou
            if _box_iou(older.mask, younger.mask, extents[a], extents[b], merge) >= merge:
                older.mask = older.mask | younger.mask
                extents[a] = _Extent.of(older.mask)
                ended.add(b)
    state.tracks = [t for n, t in enumerate(state.tracks) if n not in ended]


def _record(instances: list[TrackedInstance], ids: np.ndarray, moving: np.ndarray, frame: int) -> None:
    """Add the pixels (and moving pixels) of frame ``frame``'s ids to every instance."""
    x, y, w, h = cv2.boundingRect((ids > 0).view(np.uint8))  # only the box around the ids is read
    ids, moving = ids[y : y + h, x : x + w], moving[y : y + h, x : x + w]
    size = len(instances) + 1
    counts = np.bincount(ids.ravel(), minlength=size)
    moved = np.bincount(ids[moving], minlength=size)
    for instance in instances:
        if counts[instance.id] == 0:
            continue
        if instance.first_frame < 0:
            instance.first_frame = frame
        instance.last_frame = frame
        instance.num_frames += 1
        instance.num_pixels += int(counts[instance.id])
        instance.moving_pixels += int(moved[instance.id])


def track_objects(
    models: ObjectModels,
    frames: np.ndarray,
    keyframes: np.ndarray,
    motion: Iterable[tuple[np.ndarray, np.ndarray | None]],
    out: np.ndarray,
    cfg: TrackingConfig | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[list[str], list[TrackedInstance]]:
    """Track the VLM-named objects and the geometric moving regions through ``frames`` (see the module
    docstring); write instance ids into ``out`` (F,H,W) uint16.

    ``frames``: (F,H,W,3) uint8, memory-mapped welcome (read one frame at a time). ``keyframes``: (F,)
    bool, the frames shown to the VLM. ``motion``: per frame in order, the geometric motion mask (H,W)
    bool and the step flow (H,W,2) float pixels to the next frame (``None`` for the last frame or a
    one-frame video), e.g. from ``dv4d.pipeline.motion.segment_motion``. Returns the VLM's names and the
    instances ordered by id."""
    cfg = cfg or TrackingConfig()
    num = len(frames)
    if out.shape != frames.shape[:3] or keyframes.shape != (num,):
        raise ValueError(
            f"out (F,H,W) and keyframes (F,) must match frames {frames.shape}, "
            f"got {out.shape}, {keyframes.shape}"
        )
    names = models.dynamic_objects([np.array(frames[i]) for i in np.flatnonzero(keyframes)]).names
    state = _State(cfg)
    geometry = InstanceTracker(
        TrackerConfig(cfg.match_iou, cfg.max_gap, cfg.min_area, default_label=GEOMETRY_LABEL)
    )
    step_flow: np.ndarray | None = None
    motion_iter = iter(motion)
    for i in range(num):
        frame = np.array(frames[i])  # writable copy for the model processors
        found_motion = next(motion_iter, None)
        if found_motion is None:
            raise ValueError(f"motion ends after {i} frames, frames has {num}")
        moving, next_flow = found_motion
        if moving.shape != frame.shape[:2]:
            raise ValueError(f"motion mask of frame {i} is {moving.shape}, expected {frame.shape[:2]}")
        for track in state.tracks:
            if step_flow is not None and track.mask.any():
                track.mask = carry(track.mask, step_flow)
        detections: list[tuple[np.ndarray, str]] = []
        found = models.detect(frame[None], names).frames[0] if names and i % cfg.detect_every == 0 else None
        carried = [t for t in state.tracks if np.count_nonzero(t.mask) >= cfg.min_area]
        boxes = [box_of(t.mask) for t in carried] + ([] if found is None else list(found.boxes))
        if boxes:
            masks = models.segment(frame, np.stack(boxes)).masks
            for track, mask in zip(carried, masks[: len(carried)], strict=True):
                if np.count_nonzero(mask) < cfg.min_area or iou(mask, track.mask) >= cfg.reprompt_iou:
                    track.mask = mask
            if found is not None:
                detections = _merged_detections(masks[len(carried) :], found.scores, found.labels, cfg)
        for mask, label in _match(state, detections):
            if len(state.tracks) < cfg.max_tracks:
                state.tracks.append(_Track(state.new_instance(label, "detector"), mask, mask))
        _merge_tracks(state)

        ids = np.zeros(frame.shape[:2], np.uint16)
        for track in state.tracks:
            extent = _Extent.of(track.mask)
            if extent.area >= cfg.min_area:
                track.lost, track.memory = 0, track.mask
            else:
                track.lost += 1
            box = np.s_[extent.y0 : extent.y1, extent.x0 : extent.x1]
            ids[box][track.mask[box]] = track.instance.id
        state.tracks = [t for t in state.tracks if t.lost <= cfg.max_gap]
        covered = cv2.dilate((ids > 0).view(np.uint8), np.ones((5, 5), np.uint8)).view(bool)
        regions = geometry.update(i, moving & ~covered, step_flow)
        x, y, w, h = cv2.boundingRect((regions > 0).view(np.uint8))
        regions, painted = regions[y : y + h, x : x + w], ids[y : y + h, x : x + w]  # views of the box
        lookup = np.zeros(int(regions.max(initial=0)) + 1, np.uint16)  # region -> instance id
        for region in np.unique(regions[regions > 0]).tolist():
            if region not in state.geometry_ids:
                state.geometry_ids[region] = state.new_instance(GEOMETRY_LABEL, "geometry").id
            lookup[region] = state.geometry_ids[region]
        free = painted == 0
        painted[free] = lookup[regions[free]]
        _record(state.instances, ids, moving, i)
        out[i] = ids
        step_flow = next_flow
        if advance is not None:
            advance(1)
    return names, _renumber(state.instances, out, min(cfg.min_frames, num))


def _renumber(instances: list[TrackedInstance], out: np.ndarray, min_frames: int) -> list[TrackedInstance]:
    """Keep the instances seen in at least ``min_frames`` frames, renumbered 1..N (``out`` rewritten)."""
    kept = [inst for inst in instances if inst.num_frames >= min_frames]
    lookup = np.zeros(len(instances) + 1, np.uint16)
    for new_id, inst in enumerate(kept, start=1):
        lookup[inst.id] = new_id
    changed = np.zeros(len(out) + 1, np.int64)  # frames holding an id that changes (difference array)
    for inst in instances:
        if lookup[inst.id] != inst.id and inst.num_frames:
            changed[inst.first_frame] += 1
            changed[inst.last_frame + 1] -= 1
    for i in np.flatnonzero(np.cumsum(changed[:-1])):
        out[i] = lookup[out[i]]
    for new_id, inst in enumerate(kept, start=1):
        inst.id = new_id
    return kept
