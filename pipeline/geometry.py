"""Camera poses, focal and a sparse static point cloud from a video: classical incremental reconstruction.

Tracks anchored on keyframes and followed by DIS flow (positions between two keyframes averaged over
the flows from both) feed the reconstruction; tracks that break the epipolar geometry of a keyframe
pair (moving objects, occlusions) are dropped first. An essential-matrix initialisation on the first
keyframe pair with enough parallax (image motion that no camera rotation explains, whatever the
focal; a general homography would also explain a dolly towards a wall) is followed by PnP
registration of the other keyframes and triangulation, each new keyframe closing with a
sliding-window bundle adjustment of the latest keyframes against the fixed older ones, then a global
bundle adjustment over every keyframe (`point_ba`: the project's Levenberg-Marquardt + Schur solver;
points with outlier observations, mostly moving objects, are dropped and the problem re-solved).
Non-keyframes are posed by PnP and a motion-only adjustment against the fixed points, and a final
adjustment over every frame (short clips) refines all poses, the points and the focal together; a
longer clip refines the focal first, on a reconstruction of its first keyframes. Memory stays
bounded on long videos: the global adjustment goes block by block beyond a number of keyframes, and
the motion-only adjustments take a bounded chunk of frames at a time.
Without an intrinsics prior the focal is chosen by the truncated reprojection error of small
reconstructions (no triangulation-angle cut, which would favour short focals) over a grid of fields
of view, refined by bisection. Ill-conditioned inputs (static camera, pure rotation, too few frames,
no texture) give flags and valid finite poses rather than errors. Units are free: the median depth
of the points seen from the first frame is 1.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from dv4d.pipeline.errors import GeometryError
from dv4d.pipeline.point_ba import Observations, bundle_adjust
from dv4d.pipeline.tracks import TrackConfig, Tracks, track_frames

MIN_PNP_POINTS = 12
MIN_INIT_POINTS = 30


@dataclass(frozen=True)
class GeometryConfig:
    """Settings of the classical camera recovery."""

    tracks: TrackConfig = field(default_factory=TrackConfig)
    """How flow tracks are seeded and checked."""
    ransac_px: float = 1.0
    """RANSAC inlier threshold (pixels) for the essential matrix and PnP."""
    max_reproj_px: float = 2.5
    """Observations reprojecting worse than this after a bundle adjustment are dropped as outliers."""
    final_ba_max_frames: int = 120
    """End with a bundle adjustment over every posed frame (not only the keyframes) when the clip has
    at most this many frames: its Schur complement holds a block per pair of frames sharing a track, so
    its memory grows with the square of the track length (5.4 GB at 300 frames of a sideways pan)."""
    final_ba_iterations: int = 5
    """Levenberg-Marquardt iterations of that final adjustment over every frame (it starts from the
    global keyframe adjustment and the motion-only poses)."""
    refine_focal: bool = True
    """Without an intrinsics prior, let that final bundle adjustment refine the searched focal; a longer
    clip refines it beforehand with a reconstruction of its first `global_ba_max_keyframes` keyframes,
    and is then reconstructed with it."""
    outlier_rounds: int = 2
    """Bundle adjustments re-run after dropping the points with an outlier observation."""
    huber_px: float = 1.0
    """Huber threshold of the bundle adjustment, pixels."""
    ba_iterations: int = 15
    """Levenberg-Marquardt iterations of each bundle adjustment."""
    window_keyframes: int = 5
    """Keyframes adjusted together (older ones held fixed) after each new keyframe is registered; a
    global adjustment over every keyframe follows."""
    global_ba_max_keyframes: int = 100
    """The global adjustment solves every keyframe at once up to this many keyframes; a longer video
    gets blocks of this many consecutive keyframes (overlapping by half) adjusted in turn, the others
    held fixed, so that its memory stays bounded whatever the video's length."""
    motion_ba_chunk_frames: int = 64
    """Non-keyframes posed together by one motion-only adjustment (their poses do not interact there;
    chunks keep its memory bounded on long videos)."""
    init_min_angle_deg: float = 3.0
    """The initial keyframe pair is the first whose median triangulation angle reaches this."""
    min_angle_deg: float = 0.75
    """Smallest triangulation angle of a new point; a clip whose best pair stays below is rotation-only."""
    min_parallax_px: float = 0.5
    """Initial pairs need this rotation-compensated parallax (80th percentile of the distances of the
    correspondences to the best pure-rotation prediction, over the focals of `rotation_focal_fov_deg`),
    pixels."""
    rotation_focal_fov_deg: tuple[float, float] = (20.0, 150.0)
    """Range of horizontal fields of view over which that pure-rotation prediction may pick its focal."""
    parallax_ratio: float = 2.0
    """The parallax only counts when it is this many times the pair's epipolar residual (80th
    percentile); otherwise the pair is explained by a rotation alone."""
    static_px: float = 0.3
    """A clip whose frame-to-frame median flow never exceeds this (pixels) is a static camera."""
    focal_search_fov_deg: tuple[float, ...] = (40.0, 55.0, 70.0, 85.0, 100.0)
    """Horizontal fields of view (over the long side) tried when no intrinsics prior is given."""
    focal_search_keyframes: int = 9
    """Keyframes used by each reconstruction of the focal search."""
    focal_search_rounds: int = 2
    """Bisection rounds around the best grid focal."""
    focal_search_ba_iterations: int = 8
    """Levenberg-Marquardt iterations of the bundle adjustments inside the focal search."""
    focal_search_min_angle_deg: float = 0.0
    """`min_angle_deg` inside the focal search. Triangulation angles grow as the focal shrinks, so a
    cut on them keeps more points (fewer observations scored as untriangulated) at shorter focals and
    biases the search towards them: forward motion, with its many small-angle points near the focus of
    expansion, lost 8-13 % of focal that way. The reconstruction with the chosen focal applies
    `min_angle_deg`, and with it the rotation-only test, again."""
    focal_min_contrast: float = 0.05
    """The focal counts as observed when the worst grid fit is this much (relative) above the best."""
    default_fov_deg: float = 60.0
    """Field of view assumed when the focal cannot be observed (no prior, no usable motion)."""
    min_frames: int = 5
    """Clips with fewer frames are flagged "few_frames" (and still reconstructed when possible)."""

    def __post_init__(self) -> None:
        if self.global_ba_max_keyframes < 2:
            raise GeometryError(f"global_ba_max_keyframes must be >= 2, got {self.global_ba_max_keyframes}")
        if self.motion_ba_chunk_frames < 1:
            raise GeometryError(f"motion_ba_chunk_frames must be >= 1, got {self.motion_ba_chunk_frames}")


@dataclass
class GeometryResult:
    """Cameras and sparse structure of one video (F frames, N points); world = first frame's camera."""

    c2w: np.ndarray
    """(F, 4, 4) float64 camera-to-world poses, OpenCV axes, unit-free scale (see module docstring)."""
    K: np.ndarray
    """(3, 3) float64 intrinsics in pixels of the frames given."""
    is_keyframe: np.ndarray
    """(F,) bool keyframes used for the reconstruction."""
    points: np.ndarray
    """(N, 3) float64 static points in world coordinates."""
    colors: np.ndarray
    """(N, 3) uint8 RGB colours of the points."""
    reproj_rmse_px: float
    """RMS reprojection error of the inlier observations, pixels (0 when nothing was solved)."""
    static_fraction: float
    """Fraction of all track observations that are inliers of the recovered static scene (the rest:
    moving objects, occlusions, untriangulated tracks)."""
    flags: list[str]
    """Quality flags, e.g. "static_camera", "pure_rotation", "focal_unobserved", "few_frames",
    "unregistered_frames"."""
    posed: np.ndarray
    """(F,) bool frames whose pose was solved; the others (flag "unregistered_frames") carry the pose of
    the nearest solved frame."""


@dataclass
class _Recon:
    """Incremental reconstruction state over a frame set (w2c poses of registered frames)."""

    R: dict[int, np.ndarray]
    t: dict[int, np.ndarray]
    points: np.ndarray
    """(T, 3) world points per track id; NaN where not triangulated."""
    focal: float
    rmse: float = 0.0
    inlier_fraction: float = 0.0
    """Share of all track observations of the adjusted frames that are inliers of the reconstruction."""


def _intrinsics(focal: float, w: int, h: int) -> np.ndarray:
    return np.array([[focal, 0.0, (w - 1) / 2], [0.0, focal, (h - 1) / 2], [0.0, 0.0, 1.0]])


def _fov_focal(fov_deg: float, w: int, h: int) -> float:
    return 0.5 * max(w, h) / np.tan(np.deg2rad(fov_deg) / 2)


def _normalized(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    return (xy - K[:2, 2]) / K[0, 0]


def _triangulate(
    K: np.ndarray,
    Ra: np.ndarray,
    ta: np.ndarray,
    Rb: np.ndarray,
    tb: np.ndarray,
    xa: np.ndarray,
    xb: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(world points (n, 3), ok (n,)): DLT triangulation with positive depth in both views."""
    Pa = K @ np.hstack([Ra, ta[:, None]])
    Pb = K @ np.hstack([Rb, tb[:, None]])
    hom = cv2.triangulatePoints(Pa, Pb, xa.T.astype(np.float64), xb.T.astype(np.float64)).T
    with np.errstate(divide="ignore", invalid="ignore"):
        X = hom[:, :3] / hom[:, 3:]
    za = X @ Ra[2] + ta[2]
    zb = X @ Rb[2] + tb[2]
    ok = np.isfinite(X).all(axis=1) & (za > 0) & (zb > 0)
    return X, ok


def _angles_deg(X: np.ndarray, Ra: np.ndarray, ta: np.ndarray, Rb: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Triangulation angle (degrees) at each world point between the two camera centres."""
    ca, cb = -Ra.T @ ta, -Rb.T @ tb
    da, db = X - ca, X - cb
    cos = np.sum(da * db, axis=1) / np.maximum(np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _reproj_error(K: np.ndarray, R: np.ndarray, t: np.ndarray, X: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xc = X @ R.T + t
    uv = xc[:, :2] / np.maximum(xc[:, 2:], 1e-9) * K[0, 0] + K[:2, 2]
    err = np.linalg.norm(uv - xy, axis=1)
    return np.where(xc[:, 2] > 0, err, np.inf)


def _rotation_residual(x0: np.ndarray, x1: np.ndarray, focal: float, pp: np.ndarray) -> np.ndarray:
    """(n,) pixel distances of x1 to x0 rotated by the rotation (about the camera centre, at `focal`)
    that fits best: Kabsch on the bearing vectors, refitted once on the 80 % best-fitting points."""

    def bearings(xy: np.ndarray) -> np.ndarray:
        b = np.hstack([(xy - pp) / focal, np.ones((len(xy), 1))])
        return b / np.linalg.norm(b, axis=1, keepdims=True)

    b0, b1 = bearings(x0), bearings(x1)
    keep = np.ones(len(x0), bool)
    for _ in range(2):
        u, _, vt = np.linalg.svd(b1[keep].T @ b0[keep])
        R = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
        rotated = b0 @ R.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = rotated[:, :2] / rotated[:, 2:] * focal + pp
        err = np.where(rotated[:, 2] > 0, np.linalg.norm(uv - x1, axis=1), np.inf)
        keep = err <= np.percentile(err, 80, method="nearest")
    return err


def _rotation_parallax(x0: np.ndarray, x1: np.ndarray, E: np.ndarray, K: np.ndarray, cfg: GeometryConfig
                       ) -> float:  # fmt: skip
    """Parallax no camera rotation can explain, pixels: 0 unless it clearly exceeds the epipolar noise.

    The 80th percentile of the distances of x1 to the best pure-rotation prediction x1 ~ K' R K'^-1 x0,
    minimised over the focal of K' (`rotation_focal_fov_deg`) so that a wrong focal candidate does not
    turn a rotation into parallax; counted only when it is `parallax_ratio` times the 80th percentile
    of the distances to the epipolar lines of E. A general homography is no test for rotation: it also
    fits a translation towards a plane (a forward dolly facing a wall), where it would hide the parallax.
    """
    half_extent = float(K[:2, 2].max()) + 0.5
    widest, narrowest = (
        half_extent / np.tan(np.deg2rad(fov) / 2) for fov in cfg.rotation_focal_fov_deg[::-1]
    )
    focals = np.geomspace(widest, narrowest, 25)
    r_res = min(
        float(np.percentile(_rotation_residual(x0, x1, f, K[:2, 2]), 80, method="nearest")) for f in focals
    )
    Kinv = np.linalg.inv(K)
    F = Kinv.T @ E @ Kinv
    lines = np.hstack([x0, np.ones((len(x0), 1))]) @ F.T
    e_res = np.abs(np.sum(lines[:, :2] * x1, axis=1) + lines[:, 2]) / np.linalg.norm(lines[:, :2], axis=1)
    return r_res if r_res >= cfg.parallax_ratio * float(np.percentile(e_res, 80)) else 0.0


def _initialize(tracks: Tracks, keyframes: list[int], K: np.ndarray, cfg: GeometryConfig) -> _Recon | None:
    """Two-view start on (keyframes[0], k): the first k with enough parallax, else the best; None if none."""
    k0 = keyframes[0]
    best: tuple[float, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    for k in keyframes[1:]:
        ids, x0, x1 = tracks.common(k0, k)
        if len(ids) < MIN_INIT_POINTS:
            break
        E, mask = cv2.findEssentialMat(x0, x1, K, cv2.RANSAC, 0.999, cfg.ransac_px)
        if E is None or E.shape != (3, 3):
            continue
        if _rotation_parallax(x0, x1, E, K, cfg) < cfg.min_parallax_px:
            continue
        _, R, t, mask = cv2.recoverPose(E, x0, x1, K, mask=mask)
        inl = mask.ravel() > 0
        if inl.sum() < MIN_INIT_POINTS:
            continue
        t = t.ravel()
        X, ok = _triangulate(K, np.eye(3), np.zeros(3), R, t, x0[inl], x1[inl])
        if ok.sum() < MIN_INIT_POINTS:
            continue
        angle = float(np.median(_angles_deg(X[ok], np.eye(3), np.zeros(3), R, t)))
        if best is None or angle > best[0]:
            best = (angle, k, R, t, ids[inl][ok], X[ok])
        if angle >= cfg.init_min_angle_deg:
            break
    if best is None or best[0] < cfg.min_angle_deg:
        return None
    _, k, R, t, ids, X = best
    points = np.full((len(tracks.colors), 3), np.nan)
    points[ids] = X
    return _Recon(R={k0: np.eye(3), k: R}, t={k0: np.zeros(3), k: t}, points=points, focal=float(K[0, 0]))


def _register(tracks: Tracks, rec: _Recon, frame: int, K: np.ndarray, cfg: GeometryConfig) -> bool:
    """PnP (RANSAC + LM refinement) of `frame` against the triangulated points; True on success."""
    ids, xy = tracks.in_frame(frame)
    X = rec.points[ids]
    known = np.isfinite(X).all(axis=1)
    if known.sum() < MIN_PNP_POINTS:
        return False
    nearest = min(rec.R, key=lambda r: abs(r - frame))
    rvec = cv2.Rodrigues(rec.R[nearest])[0]
    tvec = rec.t[nearest].reshape(3, 1).copy()
    obj, img = X[known], xy[known]
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        obj, img, K, None, rvec, tvec, useExtrinsicGuess=True, iterationsCount=200,
        reprojectionError=2.0 * cfg.ransac_px, confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE,
    )  # fmt: skip
    if not ok or inliers is None or len(inliers) < MIN_PNP_POINTS:
        return False
    inl = inliers.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K, None, rvec, tvec)
    rec.R[frame] = cv2.Rodrigues(rvec)[0]
    rec.t[frame] = tvec.ravel()
    return True


def _triangulate_new(tracks: Tracks, rec: _Recon, frame: int, K: np.ndarray, cfg: GeometryConfig) -> None:
    """Triangulate the untriangulated tracks of `frame` against the earliest registered frame seeing them."""
    for other in sorted(rec.R):
        if other == frame:
            continue
        ids, xa, xb = tracks.common(other, frame)
        todo = ~np.isfinite(rec.points[ids]).all(axis=1)
        if not todo.any():
            continue
        ids, xa, xb = ids[todo], xa[todo], xb[todo]
        Ra, ta, Rb, tb = rec.R[other], rec.t[other], rec.R[frame], rec.t[frame]
        X, ok = _triangulate(K, Ra, ta, Rb, tb, xa, xb)
        ok &= _angles_deg(np.nan_to_num(X), Ra, ta, Rb, tb) >= cfg.min_angle_deg
        ok &= _reproj_error(K, Ra, ta, X, xa) <= cfg.ransac_px
        ok &= _reproj_error(K, Rb, tb, X, xb) <= cfg.ransac_px
        rec.points[ids[ok]] = X[ok]


def _observations(tracks: Tracks, rec: _Recon, frames: list[int]) -> tuple[Observations, int]:
    """(observations of the triangulated tracks in `frames` (cam = position in `frames`, pt = track id),
    number of all observations of those frames)."""
    cams, pts, xys = [], [], []
    for c, f in enumerate(frames):
        ids, xy = tracks.in_frame(f)
        known = np.isfinite(rec.points[ids]).all(axis=1)
        cams.append(np.full(known.sum(), c))
        pts.append(ids[known])
        xys.append(xy[known])
    total = sum(int(tracks.starts[f + 1] - tracks.starts[f]) for f in frames)
    return Observations(np.concatenate(cams), np.concatenate(pts), np.concatenate(xys)), total


def _refine(tracks: Tracks, rec: _Recon, frames: list[int], pp: np.ndarray, cfg: GeometryConfig,
            refine_focal: bool = False, window: list[int] | None = None) -> None:  # fmt: skip
    """Bundle-adjust registered `frames` and drop the points with outlier observations.

    Without `window` every frame but the first (the gauge) and every point seen is adjusted. With a
    `window`, only its frames (never the first of `frames`) and the points they see move; the other
    frames' observations of those points constrain them from fixed poses.
    """
    frames = [f for f in frames if f in rec.R]
    free_frames = set(frames[1:]) if window is None else set(window) & set(frames[1:])
    free_cams = np.array([f in free_frames for f in frames])
    for round_ in range(cfg.outlier_rounds + 1):
        obs, total = _observations(tracks, rec, frames)
        if window is not None:
            seen = np.zeros(len(rec.points), bool)
            seen[obs.pt[free_cams[obs.cam]]] = True
            keep = seen[obs.pt]
            obs = Observations(obs.cam[keep], obs.pt[keep], obs.xy[keep])
        used, pt_local = np.unique(obs.pt, return_inverse=True)
        sol = bundle_adjust(
            np.stack([rec.R[f] for f in frames]), np.stack([rec.t[f] for f in frames]), rec.points[used],
            rec.focal, pp, Observations(obs.cam, pt_local, obs.xy), free_cams, np.ones(len(used), bool),
            refine_focal, cfg.ba_iterations, cfg.huber_px,
        )  # fmt: skip
        err = np.linalg.norm(sol.residuals, axis=1)
        good = (err <= cfg.max_reproj_px) & (sol.depth > 0)
        for c, f in enumerate(frames):
            rec.R[f], rec.t[f] = sol.R[c], sol.t[c]
        rec.focal = sol.focal
        rec.points[used] = sol.points
        support = np.bincount(pt_local[good], minlength=len(used))
        rec.points[used[support < 2]] = np.nan
        rec.rmse = float(np.sqrt(np.mean(err[good] ** 2))) if good.any() else float("inf")
        if window is None:
            rec.inlier_fraction = float(good.sum() / max(total, 1))
        if good.all() or round_ == cfg.outlier_rounds:
            break
        # Drop every point with an outlier observation (mostly the moving objects), then re-solve.
        rec.points[used[np.bincount(pt_local[~good], minlength=len(used)) > 0]] = np.nan


def _score(tracks: Tracks, rec: _Recon, frames: list[int], pp: np.ndarray, cfg: GeometryConfig) -> None:
    """Set `rec.rmse` and `rec.inlier_fraction` from the reprojection errors in `frames`, frame by frame
    (as `_refine` does after a solve: inliers reproject within `max_reproj_px`)."""
    K = np.array([[rec.focal, 0.0, pp[0]], [0.0, rec.focal, pp[1]], [0.0, 0.0, 1.0]])
    squared, inliers, total = 0.0, 0, 0
    for f in frames:
        ids, xy = tracks.in_frame(f)
        X = rec.points[ids]
        known = np.isfinite(X).all(axis=1)
        err = _reproj_error(K, rec.R[f], rec.t[f], X[known], xy[known])
        good = err <= cfg.max_reproj_px
        squared += float(np.sum(err[good] ** 2))
        inliers += int(good.sum())
        total += len(ids)
    rec.rmse = float(np.sqrt(squared / inliers)) if inliers else float("inf")
    rec.inlier_fraction = inliers / max(total, 1)


def _refine_global(
    tracks: Tracks, rec: _Recon, frames: list[int], pp: np.ndarray, cfg: GeometryConfig
) -> None:
    """Bundle-adjust every registered frame of `frames` (the first is the gauge): in one solve up to
    `cfg.global_ba_max_keyframes` frames, else block by block (overlapping by half, the rest fixed)."""
    frames = [f for f in frames if f in rec.R]
    size = cfg.global_ba_max_keyframes
    if len(frames) <= size:
        _refine(tracks, rec, frames, pp, cfg)
        return
    step = size // 2
    for start in range(0, len(frames) - size + step, step):
        _refine(tracks, rec, frames, pp, cfg, window=frames[start : start + size])
    _score(tracks, rec, frames, pp, cfg)


def _refine_motion(
    tracks: Tracks, rec: _Recon, frames: list[int], pp: np.ndarray, cfg: GeometryConfig
) -> None:
    """Motion-only adjustment: the poses of registered `frames` against the fixed triangulated points,
    `cfg.motion_ba_chunk_frames` frames per solve."""
    frames = [f for f in frames if f in rec.R]
    for start in range(0, len(frames), cfg.motion_ba_chunk_frames):
        chunk = frames[start : start + cfg.motion_ba_chunk_frames]
        obs, _ = _observations(tracks, rec, chunk)
        used, pt_local = np.unique(obs.pt, return_inverse=True)
        sol = bundle_adjust(
            np.stack([rec.R[f] for f in chunk]), np.stack([rec.t[f] for f in chunk]), rec.points[used],
            rec.focal, pp, Observations(obs.cam, pt_local, obs.xy), np.ones(len(chunk), bool),
            np.zeros(len(used), bool), False, cfg.ba_iterations, cfg.huber_px,
        )  # fmt: skip
        for c, f in enumerate(chunk):
            rec.R[f], rec.t[f] = sol.R[c], sol.t[c]


def _reconstruct(tracks: Tracks, keyframes: list[int], focal: float, size: tuple[int, int],
                 cfg: GeometryConfig) -> _Recon | None:  # fmt: skip
    """Incremental reconstruction over `keyframes` (sorted; the first one is the world frame)."""
    w, h = size
    K = _intrinsics(focal, w, h)
    rec = _initialize(tracks, keyframes, K, cfg)
    if rec is None:
        return None
    _refine(tracks, rec, sorted(rec.R), K[:2, 2], cfg)
    for k in keyframes[1:]:
        if k in rec.R:
            continue
        K = _intrinsics(rec.focal, w, h)
        if _register(tracks, rec, k, K, cfg):
            _triangulate_new(tracks, rec, k, K, cfg)
            registered = [f for f in keyframes if f in rec.R]
            _refine(tracks, rec, registered, K[:2, 2], cfg, window=registered[-cfg.window_keyframes :])
    _refine_global(tracks, rec, keyframes, K[:2, 2], cfg)
    return rec


def _search_focal(tracks: Tracks, keyframes: list[int], size: tuple[int, int], cfg: GeometryConfig
                  ) -> tuple[float, bool] | None:  # fmt: skip
    """(focal, observed): the focal whose fixed-focal reconstruction of the first keyframes fits best.

    A coarse grid of fields of view, then bisection rounds around the best. `observed` is False
    when the fit barely depends on the focal. None when no reconstruction succeeded at all.
    """
    subset = keyframes[: cfg.focal_search_keyframes]
    quick = replace(
        cfg, ba_iterations=cfg.focal_search_ba_iterations, min_angle_deg=cfg.focal_search_min_angle_deg
    )
    scores: dict[float, float] = {}

    def score(focal: float) -> None:
        rec = _reconstruct(tracks, subset, focal, size, quick)
        if rec is not None and len(rec.R) >= 2:
            # Truncated least squares over all observations: inliers count their squared error, every
            # outlier or untriangulated observation the squared RANSAC threshold.
            inl = rec.inlier_fraction
            scores[focal] = inl * rec.rmse**2 + (1.0 - inl) * cfg.ransac_px**2

    for fov in cfg.focal_search_fov_deg:
        score(_fov_focal(fov, *size))
    if not scores:
        return None
    for _ in range(cfg.focal_search_rounds):
        tried = sorted(scores)
        i = tried.index(min(scores, key=lambda f: scores[f]))
        for j in (i - 1, i + 1):
            if 0 <= j < len(tried):
                score(float(np.sqrt(tried[i] * tried[j])))
    best = min(scores, key=lambda f: scores[f])
    observed = max(scores.values()) > (1.0 + cfg.focal_min_contrast) * scores[best]
    return best, observed


def _prefix_focal(tracks: Tracks, keyframes: list[int], focal: float, size: tuple[int, int],
                  cfg: GeometryConfig) -> float:  # fmt: skip
    """`focal` refined by a bundle adjustment of the reconstruction of the first
    `cfg.global_ba_max_keyframes` keyframes; `focal` itself when that reconstruction fails.

    For clips too long for the final adjustment over every frame: adjusting the focal later, with
    keyframe blocks against fixed neighbours registered at the old focal, barely moves it."""
    rec = _reconstruct(tracks, keyframes[: cfg.global_ba_max_keyframes], focal, size, cfg)
    if rec is None:
        return focal
    _refine(tracks, rec, sorted(rec.R), _intrinsics(focal, *size)[:2, 2], cfg, refine_focal=True)
    return rec.focal


def _rotation_only(tracks: Tracks, num: int, focal: float, size: tuple[int, int]) -> list[np.ndarray]:
    """w2c rotations of every frame chained from frame-to-frame homographies H = K R K^-1."""
    K = _intrinsics(focal, *size)
    Kinv = np.linalg.inv(K)
    rotations = [np.eye(3)]
    for i in range(1, num):
        _, x0, x1 = tracks.common(i - 1, i)
        step = np.eye(3)
        if len(x0) >= 8:
            H, _ = cv2.findHomography(x0, x1, cv2.RANSAC, 1.0)
            if H is not None:
                u, _, vt = np.linalg.svd(Kinv @ H @ K)
                step = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
        rotations.append(step @ rotations[-1])
    return rotations


def _drop_epipolar_outliers(
    tracks: Tracks, keyframes: list[int], cfg: GeometryConfig
) -> tuple[Tracks, float]:
    """(tracks without those that break the epipolar geometry of a keyframe pair, share of observations kept).

    Fundamental matrices (RANSAC, focal-free) between each keyframe and the next two; a track that is
    an outlier in any pair (a moving object, an occlusion the flow followed) is removed entirely.
    """
    bad: list[np.ndarray] = []
    for a, k in enumerate(keyframes):
        for b in keyframes[a + 1 : a + 3]:
            ids, xa, xb = tracks.common(k, b)
            if len(ids) < 16:
                continue
            F, mask = cv2.findFundamentalMat(xa, xb, cv2.FM_RANSAC, cfg.ransac_px, 0.999)
            if F is not None and mask is not None and F.shape == (3, 3):
                bad.append(ids[mask.ravel() == 0])
    if not bad:
        return tracks, 1.0
    keep = ~np.isin(tracks.track, np.concatenate(bad))
    return tracks.subset(keep), float(keep.mean())


def _pose_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """c2w (4, 4) from a w2c rotation and translation."""
    pose = np.eye(4)
    pose[:3, :3] = R.T
    pose[:3, 3] = -R.T @ t
    return pose


def _fill_missing(c2w: np.ndarray, known: np.ndarray) -> None:
    """Give frames without a pose the pose of the nearest posed frame (in place)."""
    idx = np.nonzero(known)[0]
    for i in np.nonzero(~known)[0]:
        c2w[i] = c2w[idx[np.argmin(np.abs(idx - i))]]


def estimate_geometry(
    frames: np.ndarray,
    is_keyframe: np.ndarray,
    K_prior: np.ndarray | None,
    cfg: GeometryConfig,
    progress: Callable[[int, int], None] | None = None,
) -> GeometryResult:
    """Poses of every frame, K and static points from (F, H, W, 3) uint8 frames (memmaps welcome).

    `is_keyframe` (F,) bool picks the frames of the incremental reconstruction (the first and last
    frame are always added); `K_prior` (3, 3) fixes the intrinsics when given. `progress(done, total)`
    is called once per frame tracked and once per frame posed. Raises GeometryError only for an empty
    input; degenerate motion gives flags and identity or rotation-only poses.
    """
    num = len(frames)
    if num == 0:
        raise GeometryError("no frames to reconstruct")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise GeometryError(f"frames must be (F, H, W, 3), got shape {frames.shape}")
    if is_keyframe.shape != (num,):
        raise GeometryError(f"is_keyframe must have shape ({num},), got {is_keyframe.shape}")
    h, w = frames.shape[1:3]
    size = (w, h)
    flags: list[str] = []
    if num < cfg.min_frames:
        flags.append("few_frames")
    is_key = is_keyframe.astype(bool).copy()
    is_key[0] = is_key[-1] = True
    keyframes = [int(k) for k in np.nonzero(is_key)[0]]
    c2w = np.tile(np.eye(4), (num, 1, 1))
    posed = np.ones(num, bool)
    focal = float(K_prior[0, 0]) if K_prior is not None else _fov_focal(cfg.default_fov_deg, w, h)
    K = K_prior.astype(np.float64).copy() if K_prior is not None else _intrinsics(focal, w, h)

    def finish(points: np.ndarray, colors: np.ndarray, rmse: float, static: float) -> GeometryResult:
        if not np.isfinite(c2w).all():
            raise GeometryError("camera recovery produced non-finite poses")
        return GeometryResult(c2w, K, is_key, points, colors, rmse, static, flags, posed)

    empty_pts, empty_cols = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    if num == 1:
        if K_prior is None:
            flags.append("focal_unobserved")
        return finish(empty_pts, empty_cols, 0.0, 1.0)

    tick = (lambda i, total: progress(i, 2 * num)) if progress is not None else None
    tracks = track_frames(frames, is_key, cfg.tracks, tick)
    if len(tracks.colors) == 0:
        flags.append("textureless")
        if K_prior is None:
            flags.append("focal_unobserved")
        return finish(empty_pts, empty_cols, 0.0, 0.0)
    if tracks.motion_px.max() <= cfg.static_px:
        flags.append("static_camera")
        if K_prior is None:
            flags.append("focal_unobserved")
        return finish(empty_pts, empty_cols, 0.0, 1.0)

    tracks, static_share = _drop_epipolar_outliers(tracks, keyframes, cfg)
    searched = _search_focal(tracks, keyframes, size, cfg) if K_prior is None else None
    if searched is not None and cfg.refine_focal and num > cfg.final_ba_max_frames:
        searched = (_prefix_focal(tracks, keyframes, searched[0], size, cfg), searched[1])
    rec = None if K_prior is None and searched is None else _reconstruct(
        tracks, keyframes, searched[0] if searched else focal, size, cfg)  # fmt: skip
    if rec is None:
        flags.append("pure_rotation")
        if K_prior is None:
            flags.append("focal_unobserved")
        for i, R in enumerate(_rotation_only(tracks, num, focal, size)):
            c2w[i, :3, :3] = R.T
        return finish(empty_pts, empty_cols, 0.0, 1.0)

    if searched is not None:
        K = _intrinsics(rec.focal, w, h)
        if not searched[1]:
            flags.append("focal_unobserved")
    for i in range(num):
        if i not in rec.R:
            _register(tracks, rec, i, K, cfg)
        if progress is not None:
            progress(num + i + 1, 2 * num)
    _refine_motion(tracks, rec, [i for i in range(num) if not is_key[i]], K[:2, 2], cfg)
    if num <= cfg.final_ba_max_frames:
        final = replace(cfg, ba_iterations=cfg.final_ba_iterations)
        _refine(
            tracks, rec, sorted(rec.R), K[:2, 2], final, refine_focal=K_prior is None and cfg.refine_focal
        )
        if K_prior is None:
            K = _intrinsics(rec.focal, w, h)
    posed[:] = [i in rec.R for i in range(num)]
    for i in rec.R:
        c2w[i] = _pose_matrix(rec.R[i], rec.t[i])
    if not posed.all():
        flags.append("unregistered_frames")
        _fill_missing(c2w, posed)
    is_key &= posed

    valid = np.isfinite(rec.points).all(axis=1)
    points, colors = rec.points[valid], tracks.colors[valid]
    # Unit: median depth of the points seen in the first frame (or of all points) is 1.
    ids0, _ = tracks.in_frame(0)
    seen0 = rec.points[ids0][valid[ids0]]
    depths = (seen0 if len(seen0) >= MIN_INIT_POINTS else points)[:, 2]
    scale = float(np.median(depths[depths > 0])) if (depths > 0).any() else 1.0
    c2w[:, :3, 3] /= scale
    return finish(points / scale, colors, rec.rmse, static_share * rec.inlier_fraction)
