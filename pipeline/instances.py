"""Stable instance ids across a video from per-frame masks, streamed frame by frame.

Each frame gives candidate regions: the 8-connected components of a boolean dynamic mask, those closer
than ``group_fraction`` of the long side grouped into one (classical path, label
``TrackerConfig.default_label``; a moving object often comes as several pieces), or the regions of an
integer proposal map from a segmenter (model path, one region per nonzero value, labels given per
value). Every live track predicts where it is in the new frame: its mask forward-warped by the flow
when it was seen in the previous call's frame and a flow is given, otherwise its last mask shifted by
its constant-velocity estimate (centroid motion in pixels per frame). Frame numbers may skip (e.g.
keyframes only): gaps and velocities count frame numbers. Candidates are matched to predictions greedily
by overlap score ``max(IoU, fraction of the prediction covered)`` above ``min_iou``, and only to tracks
of the same label. A candidate that covers the predictions of several established tracks (matched alone
in at least ``min_solo_frames`` frames: objects merged into one blob while crossing) is split among
them, each pixel going to the nearest prediction, and those tracks coast on their predictions (shape
and velocity kept) until they separate again. Otherwise it continues one track alone (the one seen
most recently, then most often, then with the best score) and the other tracks it covers (fragments of
the same object) are not continued. Unmatched candidates of at least ``min_area`` pixels start new
tracks; a track unseen for more than ``max_gap`` frames is never continued. Ids are 1..N in order of
first appearance; 0 is background. ``finish`` then drops the tracks seen in fewer than ``min_frames``
frames (flicker) and renumbers the rest.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class TrackerConfig:
    """Matching rules of ``InstanceTracker``."""

    min_iou: float = 0.3
    """Overlap score (max of IoU and covered fraction of the predicted mask) needed to continue a track."""
    max_gap: int = 5
    """Frames a track may go unseen (occluded, missed) and still be continued."""
    min_area: int = 64
    """Candidate regions of fewer pixels neither start nor continue a track (they get id 0)."""
    default_label: str = "object"
    """Label of regions that come without one (the classical path: a neutral word, no invented text)."""
    group_fraction: float = 0.04
    """Components of a boolean mask closer than this fraction of the image's long side form one candidate."""
    min_solo_frames: int = 5
    """A blob covering several tracks is split among those matched alone in at least this many frames."""
    min_frames: int = 5
    """``finish`` drops tracks that carry pixels in fewer frames than this."""

    def __post_init__(self) -> None:
        if not 0 < self.min_iou <= 1:
            raise ValueError(f"min_iou must be in (0, 1], got {self.min_iou}")
        if self.max_gap < 0 or self.min_area < 1:
            raise ValueError("max_gap must be >= 0 and min_area >= 1")
        if self.group_fraction < 0 or self.min_solo_frames < 0 or self.min_frames < 1:
            raise ValueError("group_fraction and min_solo_frames must be >= 0, min_frames >= 1")


@dataclass
class InstanceRecord:
    """One tracked instance over the whole video (an entry of ``instances.json``)."""

    id: int
    """Instance id in ``instances.npy`` (1..N)."""
    label: str
    """What it is (``TrackerConfig.default_label`` in the classical path)."""
    dynamic: bool
    """Whether it was found as moving (any of its observations came from a dynamic mask/proposal)."""
    first_frame: int
    """First sampled frame index where it has pixels."""
    last_frame: int
    """Last sampled frame index where it has pixels."""
    num_pixels: int
    """Pixels carrying this id, summed over all frames."""
    caption: str | None = None
    """Object caption (``None`` without a captioning model)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "dynamic": self.dynamic,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "num_pixels": self.num_pixels,
            "caption": self.caption,
        }


@dataclass
class _Track:
    record: InstanceRecord
    mask: np.ndarray
    """Estimated full mask (H,W) bool at ``frame``: the observed region, or the prediction while merged."""
    centroid: np.ndarray
    """Centroid (x, y) pixels of ``mask``."""
    frame: int
    """Frame of ``mask`` and ``centroid``."""
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    """Centroid motion in pixels per frame, from the last two unmerged observations."""
    solo: int = 0
    """Frames in which it was matched alone to a candidate."""
    seen: int = 0
    """Frames in which it carried pixels."""


_RELEASED = np.zeros((0, 0), dtype=bool)
"""The mask of a track that can no longer be continued."""


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    height, width = mask.shape
    if abs(dx) >= width or abs(dy) >= height:  # shifted out of the frame (negative slices would wrap)
        return out
    src = mask[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _warp(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Forward-splat a mask by a flow (nearest pixel), then close the splatting holes."""
    ys, xs = np.nonzero(mask)
    f = flow[ys, xs]
    ok = np.isfinite(f).all(axis=1)
    tx = np.rint(xs[ok] + f[ok, 0]).astype(np.int64)
    ty = np.rint(ys[ok] + f[ok, 1]).astype(np.int64)
    inside = (tx >= 0) & (tx < mask.shape[1]) & (ty >= 0) & (ty < mask.shape[0])
    out = np.zeros(mask.shape, dtype=np.uint8)
    out[ty[inside], tx[inside]] = 1
    return cv2.morphologyEx(out, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)).astype(bool)


class InstanceTracker:
    """Streams per-frame masks into stable instance ids (see the module docstring)."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._tracks: list[_Track] = []
        self._active: list[_Track] = []  # those that may still be continued (the others drop their mask)
        self._frame = -1
        self._shape: tuple[int, int] | None = None
        self._calls = 0

    def _candidates(self, mask: np.ndarray, labels: Mapping[int, str] | None) -> list[tuple[np.ndarray, str]]:
        if mask.dtype == np.bool_:
            if labels is not None:
                raise ValueError("labels need an integer proposal map, not a boolean mask")
            grown = mask.astype(np.uint8)
            radius = round(self.cfg.group_fraction * max(mask.shape) / 2)
            if radius > 0:
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
                grown = cv2.dilate(grown, kernel)
            count, comp = cv2.connectedComponents(grown, connectivity=8)
            regions = [(mask & (comp == k), self.cfg.default_label) for k in range(1, count)]
        elif np.issubdtype(mask.dtype, np.integer):
            values = [int(v) for v in np.unique(mask) if v != 0]
            labels = labels or {}
            regions = [(mask == v, labels.get(v, self.cfg.default_label)) for v in values]
        else:
            raise ValueError(
                f"mask must be bool (dynamic pixels) or integer (proposal ids), got {mask.dtype}"
            )
        return [(m, lab) for m, lab in regions if int(m.sum()) >= self.cfg.min_area]

    def _predict(self, track: _Track, frame: int, previous: int, flow: np.ndarray | None) -> np.ndarray:
        if flow is not None and track.frame == previous:
            return _warp(track.mask, flow)
        dx, dy = np.rint(track.velocity * (frame - track.frame)).astype(int)
        return _shift(track.mask, int(dx), int(dy))

    def update(
        self,
        frame: int,
        mask: np.ndarray,
        flow_prev_to_cur: np.ndarray | None = None,
        labels: Mapping[int, str] | None = None,
        dynamic: bool = True,
    ) -> np.ndarray:
        """Instance ids (H,W) uint16 of ``frame`` (0 = none).

        ``mask``: (H,W) bool dynamic pixels (each 8-connected component is a candidate), or (H,W) integer
        proposal ids (each nonzero value is one candidate; its label is ``labels[value]``, the default
        label when missing). ``flow_prev_to_cur``: (H,W,2) pixels, from the previous call's frame to this
        one. ``dynamic``: whether these regions are moving objects (recorded on the tracks they feed).
        Frames must come in increasing order."""
        if frame <= self._frame:
            raise ValueError(f"frames must be given in increasing order: {frame} after {self._frame}")
        if mask.ndim != 2 or (self._shape is not None and mask.shape != self._shape):
            raise ValueError(f"mask must be (H,W) = {self._shape or '(H,W)'}, got shape {mask.shape}")
        if flow_prev_to_cur is not None and flow_prev_to_cur.shape != (*mask.shape, 2):
            raise ValueError(
                f"flow_prev_to_cur must be (H,W,2) = {(*mask.shape, 2)}, got {flow_prev_to_cur.shape}"
            )
        previous, self._frame = self._frame, frame
        self._shape = mask.shape
        self._calls += 1

        candidates = self._candidates(mask, labels)
        live = [t for t in self._active if frame - t.record.last_frame <= self.cfg.max_gap + 1]
        for track in self._active:
            if frame - track.record.last_frame > self.cfg.max_gap + 1:
                track.mask = _RELEASED  # never predicted again: memory stays bounded on long videos
        self._active = list(live)
        predictions = [self._predict(t, frame, previous, flow_prev_to_cur) for t in live]
        pairs: list[tuple[float, int, int]] = []
        for c, (region, label) in enumerate(candidates):
            area = int(region.sum())
            for k, pred in enumerate(predictions):
                if live[k].record.label != label or not pred.any():
                    continue
                inter = int((region & pred).sum())
                score = max(inter / (area + int(pred.sum()) - inter), inter / int(pred.sum()))
                if score >= self.cfg.min_iou:
                    pairs.append((score, c, k))
        owners: dict[int, list[int]] = {}
        taken: set[int] = set()
        for _, c, k in sorted(pairs, reverse=True):
            if k not in taken:
                taken.add(k)
                owners.setdefault(c, []).append(k)

        ids = np.zeros(mask.shape, dtype=np.uint16)
        for c, (region, label) in enumerate(candidates):
            if c not in owners:
                if len(self._tracks) == np.iinfo(np.uint16).max:
                    raise ValueError("more than 65535 instances: ids no longer fit in uint16")
                record = InstanceRecord(len(self._tracks) + 1, label, dynamic, frame, frame, 0)
                self._tracks.append(_Track(record, region, _centroid(region), frame))
                self._active.append(self._tracks[-1])
                self._count(self._tracks[-1], region, frame, dynamic)
                ids[region] = record.id
                continue
            claim = [k for k in owners[c] if live[k].solo >= self.cfg.min_solo_frames]
            if len(claim) < 2:
                # The most recently and most often seen track goes on (ties: the best overlap score).
                track = live[max(claim or owners[c], key=lambda k: (live[k].frame, live[k].seen))]
                centroid = _centroid(region)
                track.velocity = (centroid - track.centroid) / (frame - track.frame)
                track.mask, track.centroid, track.frame = region, centroid, frame
                track.solo += 1
                self._count(track, region, frame, dynamic)
                ids[region] = track.record.id
                continue
            # Merged blob: each pixel to the nearest prediction (ties inside overlapping predictions to the
            # nearest predicted centroid); the tracks keep their predicted shape and velocity.
            distance = np.stack([self._distance(predictions[k]) for k in claim])
            nearest = np.argmin(distance, axis=0)
            for n, k in enumerate(claim):
                track = live[k]
                track.mask, track.centroid, track.frame = predictions[k], _centroid(predictions[k]), frame
                share = region & (nearest == n)
                if share.any():
                    self._count(track, share, frame, dynamic)
                    ids[share] = track.record.id
        return ids

    @staticmethod
    def _distance(prediction: np.ndarray) -> np.ndarray:
        """Distance (pixels) to the predicted mask, plus a small tie-breaker: distance to its centroid."""
        to_mask = cv2.distanceTransform((~prediction).astype(np.uint8), cv2.DIST_L2, 3)
        cx, cy = _centroid(prediction)
        height, width = prediction.shape
        ys, xs = np.mgrid[0:height, 0:width]
        return to_mask + 1e-3 * np.hypot(xs - cx, ys - cy)

    @staticmethod
    def _count(track: _Track, share: np.ndarray, frame: int, dynamic: bool) -> None:
        record = track.record
        track.seen += 1
        record.last_frame = frame
        record.num_pixels += int(share.sum())
        record.dynamic = record.dynamic or dynamic

    def records(self) -> list[InstanceRecord]:
        """One record per id, ordered by id (1..N)."""
        return [t.record for t in self._tracks]

    def finish(self) -> np.ndarray:
        """End the video: drop the tracks seen in fewer than ``min_frames`` frames (or than the number of
        ``update`` calls, when fewer) and renumber the rest 1..M in order of first appearance. Returns the
        (N+1,) uint16 lookup from the ids ``update`` returned to the final ids (0 for dropped tracks and
        background): ``final = lookup[ids]``. ``records`` afterwards lists the kept tracks under their new
        ids; no more updates follow."""
        lookup = np.zeros(len(self._tracks) + 1, dtype=np.uint16)
        kept = [t for t in self._tracks if t.seen >= min(self.cfg.min_frames, self._calls)]
        for new_id, track in enumerate(kept, start=1):
            lookup[track.record.id] = new_id
            track.record.id = new_id
        self._tracks = kept
        self._frame = np.iinfo(np.int64).max
        return lookup
