"""A small sparse bundle adjustment (Levenberg-Marquardt, Huber, Schur complement) in numpy.

Cameras are world-to-camera (R, t), one shared pinhole focal (fx = fy) with a fixed principal point.
The first camera is held fixed (gauge); the scale stays free and is damped by LM. This is the classical
pipeline's own refinement for small problems; `dv4d.ba` is the team's general solver.
"""

from dataclasses import dataclass

import cv2
import numpy as np

DENSE_BLOCK = 4_000_000
"""Largest dense H_cp block (entries) built at once in the Schur complement."""


@dataclass
class BAProblem:
    """State and observations of a bundle adjustment (C cameras, P points, M observations)."""

    R: np.ndarray
    """(C, 3, 3) float64 world-to-camera rotations."""
    t: np.ndarray
    """(C, 3) float64 world-to-camera translations."""
    points: np.ndarray
    """(P, 3) float64 world points."""
    focal: float
    """Shared focal length in pixels."""
    pp: np.ndarray
    """(2,) float64 principal point in pixels (fixed)."""
    cam: np.ndarray
    """(M,) int64 camera of each observation."""
    pt: np.ndarray
    """(M,) int64 point of each observation."""
    xy: np.ndarray
    """(M, 2) float64 observed pixel positions."""


def project(prob: BAProblem) -> tuple[np.ndarray, np.ndarray]:
    """(reprojection residuals (M, 2) in pixels, camera-frame points (M, 3)) at the current state."""
    xc = np.einsum("mij,mj->mi", prob.R[prob.cam], prob.points[prob.pt]) + prob.t[prob.cam]
    z = np.maximum(xc[:, 2], 1e-9)
    uv = prob.focal * xc[:, :2] / z[:, None] + prob.pp
    return uv - prob.xy, xc


def _huber_weights(norms: np.ndarray, delta: float) -> np.ndarray:
    return np.where(norms <= delta, 1.0, delta / np.maximum(norms, 1e-12))


def _huber_cost(norms: np.ndarray, delta: float) -> float:
    return float(np.sum(np.where(norms <= delta, 0.5 * norms**2, delta * (norms - 0.5 * delta))))


def _skew(v: np.ndarray) -> np.ndarray:
    out = np.zeros((*v.shape[:-1], 3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def bundle_adjust(
    prob: BAProblem, refine_focal: bool, iterations: int = 20, huber_px: float = 1.0
) -> BAProblem:
    """Refine poses (all but camera 0), points and optionally the focal; returns a new problem."""
    num_cams = len(prob.R)
    dim = 6 * (num_cams - 1) + int(refine_focal)
    if dim == 0 or len(prob.cam) == 0:
        return prob
    # Camera-side variables of each observation: 6 pose columns (none for camera 0) and the focal.
    var = np.zeros((len(prob.cam), 7), np.int64)
    active = np.zeros((len(prob.cam), 7))
    moving = prob.cam > 0
    var[moving, :6] = 6 * (prob.cam[moving, None] - 1) + np.arange(6)
    active[moving, :6] = 1.0
    if refine_focal:
        var[:, 6] = dim - 1
        active[:, 6] = 1.0
    num_pts = len(prob.points)
    obs_order = np.argsort(prob.pt, kind="stable")
    obs_starts = np.concatenate([[0], np.cumsum(np.bincount(prob.pt, minlength=num_pts))])
    point_chunk = max(1, DENSE_BLOCK // (3 * dim))

    def normal_equations(
        state: BAProblem,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        res, xc = project(state)
        norms = np.linalg.norm(res, axis=1)
        w = _huber_weights(norms, huber_px)
        z = np.maximum(xc[:, 2], 1e-9)
        f = state.focal
        dproj = np.zeros((len(z), 2, 3))
        dproj[:, 0, 0] = dproj[:, 1, 1] = f / z
        dproj[:, 0, 2] = -f * xc[:, 0] / z**2
        dproj[:, 1, 2] = -f * xc[:, 1] / z**2
        jc = np.zeros((len(z), 2, 7))
        jc[:, :, :3] = dproj @ -_skew(xc)
        jc[:, :, 3:6] = dproj
        jc[:, :, 6] = xc[:, :2] / z[:, None]
        jc *= active[:, None, :]
        jp = dproj @ state.R[state.cam]
        wjc = jc * w[:, None, None]
        wjp = jp * w[:, None, None]
        hcc = np.einsum("mai,maj->mij", wjc, jc)
        hpp_obs = np.einsum("mai,maj->mij", wjp, jp)
        hpc = np.einsum("mai,maj->mij", wjp, jc)
        bc = -np.einsum("mai,ma->mi", wjc, res)
        bp = -np.einsum("mai,ma->mi", wjp, res)
        H = np.bincount(
            (var[:, :, None] * dim + var[:, None, :]).ravel(), hcc.ravel(), minlength=dim * dim
        ).reshape(dim, dim)
        g = np.bincount(var.ravel(), bc.ravel(), minlength=dim)
        hpp = np.zeros((num_pts, 3, 3))
        np.add.at(hpp, state.pt, hpp_obs)
        gp = np.zeros((num_pts, 3))
        np.add.at(gp, state.pt, bp)
        return H, g, hpp, hpc, gp, _huber_cost(norms, huber_px)

    def solve(
        H: np.ndarray, g: np.ndarray, hpp: np.ndarray, hpc: np.ndarray, gp: np.ndarray, lam: float
    ) -> tuple[np.ndarray, np.ndarray]:
        Hd = H + lam * np.diag(np.diag(H)) + 1e-9 * np.eye(dim)
        hpp_d = hpp + lam * hpp * np.eye(3) + 1e-9 * np.eye(3)
        hpp_inv = np.linalg.inv(hpp_d)
        S = Hd.copy()
        # Schur complement point chunk by point chunk: dense (dim, chunk, 3) blocks of H_cp.
        for lo in range(0, num_pts, point_chunk):
            hi = min(lo + point_chunk, num_pts)
            rows = slice(obs_starts[lo], obs_starts[hi])
            o = obs_order[rows]
            hcp = np.zeros((dim, hi - lo, 3))
            local = prob.pt[o] - lo
            np.add.at(hcp, (var[o], local[:, None]), hpc[o].transpose(0, 2, 1))
            y = np.einsum("cpi,pij->cpj", hcp, hpp_inv[lo:hi])
            S -= hcp.reshape(dim, -1) @ y.reshape(dim, -1).T
        gp_inv = np.einsum("pij,pj->pi", hpp_inv, gp)
        rhs = g - np.bincount(
            var.ravel(), np.einsum("mia,mi->ma", hpc, gp_inv[prob.pt]).ravel(), minlength=dim
        )
        dc = np.linalg.solve(S, rhs)
        back = np.zeros((num_pts, 3))
        np.add.at(back, prob.pt, np.einsum("mia,ma->mi", hpc, dc[var] * active))
        dp = np.einsum("pij,pj->pi", hpp_inv, gp - back)
        return dc, dp

    def update(state: BAProblem, dc: np.ndarray, dp: np.ndarray) -> BAProblem:
        R, t = state.R.copy(), state.t.copy()
        for c in range(1, num_cams):
            step = dc[6 * (c - 1) : 6 * c]
            dR = cv2.Rodrigues(step[:3])[0]
            R[c] = dR @ R[c]
            t[c] = dR @ t[c] + step[3:]
        focal = state.focal + (dc[-1] if refine_focal else 0.0)
        return BAProblem(R, t, state.points + dp, focal, state.pp, state.cam, state.pt, state.xy)

    state, lam = prob, 1e-3
    H, g, hpp, hpc, gp, cost = normal_equations(state)
    for _ in range(iterations):
        dc, dp = solve(H, g, hpp, hpc, gp, lam)
        candidate = update(state, dc, dp)
        new = normal_equations(candidate)
        if new[-1] < cost:
            converged = cost - new[-1] < 1e-6 * cost
            state, (H, g, hpp, hpc, gp, cost) = candidate, new
            lam = max(lam / 3.0, 1e-7)
            if converged:
                break
        else:
            lam *= 8.0
            if lam > 1e6:
                break
    return state
