"""Point tracks anchored on keyframes, followed by direct DIS flow, with forward-backward checks."""

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from dv4d.pipeline.flow import dis_flow, sample_flow, to_gray


@dataclass(frozen=True)
class TrackConfig:
    """How tracks are seeded and kept."""

    cell_fraction: float = 1.0 / 32.0
    """Seeding grid cell size as a fraction of the long image side; at most one track per cell."""
    min_corner: float = 2e-4
    """Smallest minimum-eigenvalue corner response (gray in [0, 1]) at which a track is seeded."""
    fb_max_error_px: float = 0.75
    """An observation is dropped where the forward-backward flow error exceeds this."""


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


def track_frames(
    frames: np.ndarray,
    is_keyframe: np.ndarray,
    cfg: TrackConfig,
    progress: Callable[[int, int], None] | None = None,
) -> Tracks:
    """Track points through (F, H, W, 3) uint8 frames (memmaps welcome), anchored on keyframes.

    Every frame is reached by direct flow from the latest keyframe (frame 0 is always one), so drift
    only accumulates from keyframe to keyframe. At each keyframe the tracks that arrived continue,
    and every empty textured grid cell seeds a new track at its strongest corner. An observation is
    kept where the forward-backward check passes.
    """
    num = len(frames)
    h, w = frames.shape[1:3]
    cell = max(3, round(cfg.cell_fraction * max(h, w)))
    keys = set(np.nonzero(is_keyframe)[0].tolist()) | {0}
    obs_frame, obs_track, obs_xy, colors = [], [], [], []
    motion = np.zeros(num)
    anchor_gray = to_gray(np.asarray(frames[0]))
    anchor_ids = np.zeros(0, np.int64)
    anchor_xy = np.zeros((0, 2))
    next_id = 0
    for i in range(num):
        frame = np.asarray(frames[i])
        gray = to_gray(frame)
        ids, xy = anchor_ids, anchor_xy
        if i > 0:
            fwd = dis_flow(anchor_gray, gray)
            bwd = dis_flow(gray, anchor_gray)
            motion[i] = float(np.median(np.linalg.norm(fwd, axis=-1)))
            moved = xy + sample_flow(fwd, xy[:, 0], xy[:, 1])
            back = moved + sample_flow(bwd, moved[:, 0], moved[:, 1])
            inside = (moved[:, 0] >= 0) & (moved[:, 0] <= w - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= h - 1)
            keep = inside & (np.linalg.norm(back - xy, axis=1) <= cfg.fb_max_error_px)
            ids, xy = ids[keep], moved[keep]
        if i in keys:
            new_xy = _seed(gray, xy, cell, cfg.min_corner)
            new_ids = np.arange(next_id, next_id + len(new_xy))
            next_id += len(new_xy)
            colors.append(frame[new_xy[:, 1].astype(int), new_xy[:, 0].astype(int)])
            ids, xy = np.concatenate([ids, new_ids]), np.concatenate([xy, new_xy])
            anchor_gray, anchor_ids, anchor_xy = gray, ids, xy
        obs_frame.append(np.full(len(ids), i, np.int64))
        obs_track.append(ids)
        obs_xy.append(xy)
        if progress is not None:
            progress(i + 1, num)
    counts = np.array([len(t) for t in obs_track])
    return Tracks(
        frame=np.concatenate(obs_frame),
        track=np.concatenate(obs_track),
        xy=np.concatenate(obs_xy),
        colors=np.concatenate(colors).astype(np.uint8).reshape(-1, 3),
        starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        motion_px=motion,
    )
