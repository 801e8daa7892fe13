"""Point tracks anchored on keyframes, followed by direct DIS flow, with forward-backward checks."""

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from dv4d.pipeline.flow import dis_flows, sample_flow, to_gray

PULL_BACK_STEPS = 6
"""Fixed-point iterations inverting a flow field (converges while the flow's gradient stays below 1)."""


@dataclass(frozen=True)
class TrackConfig:
    """How tracks are seeded and kept."""

    cell_fraction: float = 1.0 / 32.0
    """Seeding grid cell size as a fraction of the long image side; at most one track per cell."""
    min_corner: float = 2e-4
    """Smallest minimum-eigenvalue corner response (gray in [0, 1]) at which a track is seeded."""
    fb_max_error_px: float = 0.75
    """An observation is dropped where the forward-backward flow error exceeds this."""
    both_ways: bool = True
    """Also follow the tracks of each keyframe back into the frames since the previous keyframe: a
    track seen in a frame from both keyframes gets the average of the two positions where they
    agree within `fb_max_error_px`, and is dropped there where they do not (one more flow per
    frame, lower pose noise between keyframes). Tracks first seeded at the later keyframe are not
    added (on forward motion they made the poses worse)."""


@dataclass(frozen=True)
class Tracks:
    """Observations of all tracks, sorted by frame (M observations of T tracks in F frames)."""

    frame: np.ndarray
    """(M,) int64 frame index of each observation."""
    track: np.ndarray
    """(M,) int64 track id of each observation (0..T-1)."""
    xy: np.ndarray
    """(M, 2) float64 pixel position (x, y) of each observation."""
    colors: np.ndarray
    """(T, 3) uint8 RGB colour of each track where it was seeded."""
    starts: np.ndarray
    """(F + 1,) int64: the observations of frame i are the rows starts[i]:starts[i+1]."""
    motion_px: np.ndarray
    """(F,) float64 median flow magnitude (all pixels) from the previous keyframe to each frame (0 for 0)."""

    def in_frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(track ids (n,) sorted, positions (n, 2)) of the tracks observed in frame `index`."""
        rows = slice(self.starts[index], self.starts[index + 1])
        return self.track[rows], self.xy[rows]

    def subset(self, keep: np.ndarray) -> "Tracks":
        """The same tracks with only the observations where `keep` (M,) bool is True."""
        frame = self.frame[keep]
        counts = np.bincount(frame, minlength=len(self.starts) - 1)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Tracks(frame, self.track[keep], self.xy[keep], self.colors, starts, self.motion_px)

    def common(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(track ids, positions in i, positions in j) of the tracks seen in both frames."""
        ti, xi = self.in_frame(i)
        tj, xj = self.in_frame(j)
        ids, a, b = np.intersect1d(ti, tj, assume_unique=True, return_indices=True)
        return ids, xi[a], xj[b]


def _seed(gray: np.ndarray, occupied_xy: np.ndarray, cell: int, min_corner: float) -> np.ndarray:
    """(n, 2) float64 new track positions: the strongest corner of every empty, textured grid cell."""
    h, w = gray.shape
    ny, nx = h // cell, w // cell
    if nx == 0 or ny == 0:
        return np.zeros((0, 2))
    response = cv2.cornerMinEigenVal(gray.astype(np.float32) / 255.0, blockSize=3, ksize=3)
    blocks = response[: ny * cell, : nx * cell].reshape(ny, cell, nx, cell).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(ny, nx, cell * cell)
    best = blocks.argmax(axis=2)
    strength = np.take_along_axis(blocks, best[..., None], axis=2)[..., 0]
    free = strength >= min_corner
    if len(occupied_xy):
        cx = np.clip((occupied_xy[:, 0] // cell).astype(int), 0, nx - 1)
        cy = np.clip((occupied_xy[:, 1] // cell).astype(int), 0, ny - 1)
        free[cy, cx] = False
    gy, gx = np.nonzero(free)
    b = best[gy, gx]
    return np.stack([gx * cell + b % cell, gy * cell + b // cell], axis=1).astype(np.float64)


def _follow(
    anchor_gray: np.ndarray, gray: np.ndarray, xy: np.ndarray, cfg: TrackConfig, check: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    """(kept (n,) bool, positions (n, 2) in `gray` of the anchor positions `xy`, median flow magnitude).

    Kept: inside the image and, with `check`, passing the forward-backward check."""
    h, w = gray.shape
    flows = dis_flows([(anchor_gray, gray), (gray, anchor_gray)] if check else [(anchor_gray, gray)])
    fwd = flows[0]
    moved = xy + sample_flow(fwd, xy[:, 0], xy[:, 1])
    keep = (moved[:, 0] >= 0) & (moved[:, 0] <= w - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= h - 1)
    if check:
        back = moved + sample_flow(flows[1], moved[:, 0], moved[:, 1])
        keep &= np.linalg.norm(back - xy, axis=1) <= cfg.fb_max_error_px
    return keep, moved, float(np.median(np.linalg.norm(fwd, axis=-1)))


def _pull_back(flow: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside (n,) bool, positions (n, 2) in a frame) of the positions `xy` in a later frame, by inverting
    the (H, W, 2) flow frame -> later frame (the same time direction as the forward tracking) with
    fixed-point steps."""
    h, w = flow.shape[:2]
    pos = xy.copy()
    for _ in range(PULL_BACK_STEPS):
        pos = xy - sample_flow(flow, np.clip(pos[:, 0], 0, w - 1), np.clip(pos[:, 1], 0, h - 1))
    inside = (pos[:, 0] >= 0) & (pos[:, 0] <= w - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)
    return inside, pos


def _merge(ids: np.ndarray, xy: np.ndarray, more_ids: np.ndarray, more_xy: np.ndarray, max_px: float
           ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Union of two sets of observations of one frame, sorted by id: positions of shared ids averaged
    where they agree within `max_px`, dropped where they do not."""
    all_ids = np.concatenate([ids, more_ids])
    all_xy = np.concatenate([xy, more_xy])
    uniq, inverse, counts = np.unique(all_ids, return_inverse=True, return_counts=True)
    summed = np.zeros((len(uniq), 2))
    np.add.at(summed, inverse, all_xy)
    mean = summed / counts[:, None]
    spread = np.zeros(len(uniq))
    np.maximum.at(spread, inverse, np.linalg.norm(all_xy - mean[inverse], axis=1))
    keep = 2 * spread <= max_px
    return uniq[keep], mean[keep]


def track_frames(
    frames: np.ndarray,
    is_keyframe: np.ndarray,
    cfg: TrackConfig,
    progress: Callable[[int, int], None] | None = None,
) -> Tracks:
    """Track points through (F, H, W, 3) uint8 frames (memmaps welcome), anchored on keyframes.

    Every frame is reached by direct flow from the latest keyframe (frame 0 is always one), so drift
    only accumulates from keyframe to keyframe. At each keyframe the tracks that arrived continue,
    and every empty textured grid cell seeds a new track at its strongest corner. With
    `cfg.both_ways` the tracks of the later of two keyframes are also pulled back into the frames
    between them, refining the positions of the tracks seen from both. An observation is kept where
    the forward-backward check passes.
    """
    num = len(frames)
    h, w = frames.shape[1:3]
    cell = max(3, round(cfg.cell_fraction * max(h, w)))
    keys = set(np.nonzero(is_keyframe)[0].tolist()) | {0}
    obs_track: list[np.ndarray] = []
    obs_xy: list[np.ndarray] = []
    colors = []
    motion = np.zeros(num)
    anchor_gray = to_gray(np.asarray(frames[0]))
    anchor_ids = np.zeros(0, np.int64)
    anchor_xy = np.zeros((0, 2))
    next_id = last_key = 0
    for i in range(num):
        frame = np.asarray(frames[i])
        gray = to_gray(frame)
        ids, xy = anchor_ids, anchor_xy
        if i > 0:
            keep, moved, motion[i] = _follow(anchor_gray, gray, xy, cfg)
            ids, xy = ids[keep], moved[keep]
        if i in keys:
            new_xy = _seed(gray, xy, cell, cfg.min_corner)
            new_ids = np.arange(next_id, next_id + len(new_xy))
            next_id += len(new_xy)
            colors.append(frame[new_xy[:, 1].astype(int), new_xy[:, 0].astype(int)])
            ids, xy = np.concatenate([ids, new_ids]), np.concatenate([xy, new_xy])
            if cfg.both_ways:
                between = range(last_key + 1, i)
                flows = dis_flows([(to_gray(np.asarray(frames[j])), gray) for j in between])
                for j, flow in zip(between, flows, strict=True):
                    back_keep, back_xy = _pull_back(flow, xy)
                    back_keep &= np.isin(ids, obs_track[j])
                    obs_track[j], obs_xy[j] = _merge(
                        obs_track[j], obs_xy[j], ids[back_keep], back_xy[back_keep], cfg.fb_max_error_px
                    )
            anchor_gray, anchor_ids, anchor_xy, last_key = gray, ids, xy, i
        obs_track.append(ids)
        obs_xy.append(xy)
        if progress is not None:
            progress(i + 1, num)
    counts = np.array([len(t) for t in obs_track])
    return Tracks(
        frame=np.repeat(np.arange(num, dtype=np.int64), counts),
        track=np.concatenate(obs_track),
        xy=np.concatenate(obs_xy),
        colors=np.concatenate(colors).astype(np.uint8).reshape(-1, 3),
        starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        motion_px=motion,
    )
