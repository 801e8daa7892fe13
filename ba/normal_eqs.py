"""Gauss-Newton normal equations from per-residual Jacobian blocks, assembled with index_add_.

For residual blocks r_i with camera Jacobian A_i (m x K, columns c_i) and point Jacobian B_i
(m x d, point p_i) the normal equations are
    [U  W] [dc]   [g_c]
    [W' V] [dp] = [g_p]  (negated on the right-hand side when solving),
with U = sum A_i'A_i, V_p = sum_{i: p_i = p} B_i'B_i, W = sum A_i'B_i, g = J'r. ``U`` and ``W`` are
kept per *row* (one row per residual block touching camera parameters): the Schur complement
and the implicit matrix-vector products work on those rows. Fixed parameters map to a dummy
column ``n_c`` (and dummy point ``P``) whose entries are dropped.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.problem import ResidualTerm
from dv4d.ba.tensor_ops import small_at_b, small_matvec, small_sum


@dataclass(frozen=True)
class WeightedTerms:
    """Residual terms after robust reweighting, and the robust cost."""

    terms: list[ResidualTerm]
    """Terms whose residuals and Jacobians are scaled by sqrt(rho'(||r||^2))."""
    cost: Tensor
    """Scalar robust cost 0.5 * sum rho(||r||^2) (Ceres convention)."""


def robust_cost(terms: list[ResidualTerm]) -> Tensor:
    """Scalar cost 0.5 * sum rho(||r||^2) over all terms."""
    total = terms[0].residuals.new_zeros(())
    for term in terms:
        total = total + 0.5 * term.loss.rho(small_sum(term.residuals * term.residuals, -1)).sum()
    return total


def reweight(terms: list[ResidualTerm]) -> WeightedTerms:
    """Scale each block by sqrt(rho'(s)) (identity for the trivial loss)."""
    out = []
    for term in terms:
        if term.loss.kind == "trivial":
            out.append(term)
            continue
        sq = small_sum(term.residuals * term.residuals, -1)
        w = term.loss.weight(sq).sqrt()
        out.append(
            ResidualTerm(
                term.residuals * w[:, None],
                term.loss,
                term.camera_columns,
                None if term.camera_jacobian is None else term.camera_jacobian * w[:, None, None],
                term.point_index,
                None if term.point_jacobian is None else term.point_jacobian * w[:, None, None],
            )
        )
    return WeightedTerms(out, robust_cost(terms))


@dataclass(frozen=True)
class NormalEquations:
    """Undamped normal equations of one linearisation (R camera rows, K columns, m residuals per row)."""

    num_camera_parameters: int
    """n_c, the camera-side size."""
    num_points: int
    """P, the number of point blocks."""
    point_dim: int
    """d, the size of a point block."""
    columns: Tensor
    """(R, K) int64 camera columns of each row; n_c for fixed or padding."""
    row_point: Tensor
    """(R,) int64 point of each row; P when the row has no free point."""
    row_jacobian: Tensor
    """(R, m, K) camera Jacobian A_i of each row (zero-padded to the widest term)."""
    row_w: Tensor
    """(R, K, d) A_i'B_i per row (zero without a point)."""
    g_camera: Tensor
    """(n_c,) camera gradient J'r."""
    v: Tensor
    """(P, d, d) point blocks of J'J."""
    g_point: Tensor
    """(P, d) point gradient."""
    diag_camera: Tensor
    """(n_c,) diagonal of U."""


def _index_or_dummy(index: Tensor, dummy: int) -> Tensor:
    return torch.where(index < 0, torch.full_like(index, dummy), index)


@dataclass(frozen=True)
class _Rows:
    columns: Tensor
    point: Tensor
    jacobian: Tensor
    w: Tensor


def build_normal_equations(
    terms: list[ResidualTerm], num_camera_parameters: int, num_points: int, point_dim: int
) -> NormalEquations:
    """Assemble the normal equations of reweighted residual terms (Jacobians required)."""
    n_c, num_p, d = num_camera_parameters, num_points, point_dim
    ref = terms[0].residuals
    g_camera = ref.new_zeros(n_c + 1)
    diag_camera = ref.new_zeros(n_c + 1)
    v = ref.new_zeros(num_p + 1, d, d)
    g_point = ref.new_zeros(num_p + 1, d)
    rows: list[_Rows] = []
    for term in terms:
        r = term.residuals
        pt = None
        if term.point_index is not None:
            if term.point_jacobian is None:
                raise BundleAdjustmentError("residual term evaluated without its point Jacobian")
            pt = _index_or_dummy(term.point_index, num_p)
            jp = term.point_jacobian
            v.index_add_(0, pt, small_at_b(jp, jp))
            g_point.index_add_(0, pt, small_sum(jp * r[:, :, None], 1))
        if term.camera_columns is None or term.camera_columns.shape[1] == 0:
            continue
        if term.camera_jacobian is None:
            raise BundleAdjustmentError("residual term evaluated without its camera Jacobian")
        cols = _index_or_dummy(term.camera_columns, n_c)
        jc = term.camera_jacobian
        flat_cols = cols.reshape(-1)
        g_camera.index_add_(0, flat_cols, small_sum(jc * r[:, :, None], 1).reshape(-1))
        diag_camera.index_add_(0, flat_cols, small_sum(jc * jc, 1).reshape(-1))
        if pt is None or term.point_jacobian is None:
            rows.append(_Rows(cols, torch.full_like(cols[:, 0], num_p), jc, jc.new_zeros(*cols.shape, d)))
        else:
            rows.append(_Rows(cols, pt, jc, small_at_b(jc, term.point_jacobian)))
    merged = _merge_rows(rows, n_c, d, ref)
    return NormalEquations(
        n_c,
        num_p,
        d,
        merged.columns,
        merged.point,
        merged.jacobian,
        merged.w,
        g_camera[:n_c],
        v[:num_p],
        g_point[:num_p],
        diag_camera[:n_c],
    )


def _merge_rows(rows: list[_Rows], dummy: int, d: int, ref: Tensor) -> _Rows:
    """Concatenate the rows of several terms, zero-padding K and m to the widest."""
    if len(rows) == 1:
        return rows[0]
    if not rows:
        empty = torch.empty(0, 0, dtype=torch.int64, device=ref.device)
        return _Rows(empty, empty[:, 0], ref.new_zeros(0, 0, 0), ref.new_zeros(0, 0, d))
    width = max(x.columns.shape[1] for x in rows)
    height = max(x.jacobian.shape[1] for x in rows)
    columns, jacobians, ws = [], [], []
    for x in rows:
        n, m, k = x.jacobian.shape
        pad_cols = torch.full((n, width), dummy, dtype=torch.int64, device=ref.device)
        pad_cols[:, :k] = x.columns
        pad_jac = x.jacobian.new_zeros(n, height, width)
        pad_jac[:, :m, :k] = x.jacobian
        pad_w = x.w.new_zeros(n, width, d)
        pad_w[:, :k] = x.w
        columns.append(pad_cols)
        jacobians.append(pad_jac)
        ws.append(pad_w)
    return _Rows(torch.cat(columns), torch.cat([x.point for x in rows]), torch.cat(jacobians), torch.cat(ws))


def linearised_change(terms: list[ResidualTerm], camera_step: Tensor, point_step: Tensor) -> Tensor:
    """Model cost decrease 0.5 (||r||^2 - ||r + J step||^2) over reweighted terms (scalar)."""
    n_c = camera_step.shape[0]
    cam = torch.cat((camera_step, camera_step.new_zeros(1)))
    pts = torch.cat((point_step, point_step.new_zeros(1, point_step.shape[1])))
    total = camera_step.new_zeros(())
    for term in terms:
        jd = torch.zeros_like(term.residuals)
        if term.camera_columns is not None and term.camera_jacobian is not None:
            jd = jd + small_matvec(term.camera_jacobian, cam[_index_or_dummy(term.camera_columns, n_c)])
        if term.point_index is not None and term.point_jacobian is not None:
            jd = jd + small_matvec(
                term.point_jacobian, pts[_index_or_dummy(term.point_index, pts.shape[0] - 1)]
            )
        total = total - (term.residuals * jd).sum() - 0.5 * (jd * jd).sum()
    return total
