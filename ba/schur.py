"""Schur complement: eliminate the point blocks (3x3 points, 1x1 depths), solve the camera system.

With damping lambda the system is (U + lambda D_c) dc + W dp = -g_c, W' dc + (V + lambda D_p) dp = -g_p.
Eliminating dp gives the reduced camera system S dc = -g_c + W V^-1 g_p with S = U - W V^-1 W',
then dp = V^-1 (-g_p - W' dc). S is either assembled densely and factored by Cholesky (small camera
side) or used implicitly by preconditioned conjugate gradients with a block-Jacobi preconditioner.

Dense assembly: residual rows are grouped by their camera-column tuple (one group per camera in
BAL). Every pair of rows sharing a point adds Y_a W_b' (Y = W V^-1) to the block of its group pair
(only group(a) <= group(b); the transposes fill the other half). The pairs of each block are cut
into fixed-size chunks, so all products are one gather plus one batched matmul whose inner
dimension runs over the chunk's points; block sums take one index_add_, and one scatter writes
the blocks into the dense matrix.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.normal_eqs import NormalEquations
from dv4d.ba.tensor_ops import small_at_b, small_matmul, small_matvec


@dataclass(frozen=True)
class Damping:
    """Levenberg-Marquardt damping: lambda * clamp(diag(J'J), min, max) is added to the diagonal."""

    lam: float | Tensor
    """lambda = 1 / trust-region radius (a float, or a 0-d tensor kept on the device)."""
    min_diagonal: float
    """Lower clamp of diag(J'J) (Ceres' min_lm_diagonal)."""
    max_diagonal: float
    """Upper clamp of diag(J'J) (Ceres' max_lm_diagonal)."""


@dataclass(frozen=True)
class Step:
    """Solution of one damped system."""

    camera: Tensor
    """(n_c,) camera-side step."""
    point: Tensor
    """(P, d) point-side step."""
    ok: Tensor
    """0-d bool, False when the reduced system was not positive definite (the step must be rejected;
    both parts are zero then). A tensor, so that the solver need not wait for the device."""
    iterations: Tensor
    """0-d int64 conjugate-gradient iterations (0 for the direct solve)."""


_PAIR_CHUNK = 16
"""Row pairs per chunk in the dense assembly: each chunk of one block is one small matmul."""


@dataclass(frozen=True)
class SchurStructure:
    """Sparsity of the dense reduced camera matrix, built once per problem.

    Row pairs (a, b) sharing a point whose camera groups satisfy group(a) <= group(b) are sorted by
    their group-pair block and cut into chunks of ``_PAIR_CHUNK`` pairs (padded with a dummy zero
    row), so the whole point elimination is one gather and one batched matmul.
    """

    row_chunks: Tensor
    """(num_row_chunks, chunk) rows sorted by camera group, padded with R (a zero row), for U."""
    row_chunk_keys: Tensor
    """(num_row_chunks,) block index (group, group) of each row chunk."""
    chunk_a: Tensor
    """(num_chunks, chunk) first row of each pair; R (a zero row) for padding."""
    chunk_b: Tensor
    """(num_chunks, chunk) second row of each pair."""
    chunk_keys: Tensor
    """(num_chunks,) block index of each chunk."""
    num_blocks: int
    """Number of distinct group-pair blocks M."""
    scatter_index: Tensor
    """Flat indices in the padded (n_c + 1)^2 matrix of the M * K * K block entries, followed by
    those of the transposes of the off-diagonal blocks."""
    off_diagonal: Tensor
    """(M',) int64 indices of the off-diagonal blocks, whose transposes are scattered as well."""
    workspace: dict[str, Tensor] = field(default_factory=dict)
    """Output buffers of the large gathers, reused between solves (fresh allocations of tens of MB
    cost more in page faults than the gathers themselves)."""


def _row_pairs(row_point: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
    """All ordered pairs (a, b) of rows that share a point (a = b included)."""
    rows = torch.nonzero(row_point < num_points).squeeze(1)
    pts = row_point[rows]
    order = torch.argsort(pts, stable=True)
    sorted_rows = rows[order]
    counts = torch.bincount(pts, minlength=num_points)
    seg_start = torch.cumsum(counts, 0) - counts
    row_count = counts[pts[order]]
    rep = torch.repeat_interleave(torch.arange(sorted_rows.shape[0], device=rows.device), row_count)
    base = torch.repeat_interleave(torch.cumsum(row_count, 0) - row_count, row_count)
    within = torch.arange(rep.shape[0], device=rows.device) - base
    partner = seg_start[pts[order]][rep] + within
    return sorted_rows[rep], sorted_rows[partner]


def _chunk(keys: Tensor, num_keys: int, values: list[Tensor], pad: int) -> tuple[list[Tensor], Tensor]:
    """Sort values by key and cut each key's run into padded chunks of ``_PAIR_CHUNK``."""
    order = torch.argsort(keys, stable=True)
    keys = keys[order]
    per_key = torch.bincount(keys, minlength=num_keys)
    chunks_per_key = (per_key + _PAIR_CHUNK - 1) // _PAIR_CHUNK
    chunk_start = torch.cumsum(chunks_per_key, 0) - chunks_per_key
    pos = torch.arange(keys.shape[0], device=keys.device) - (torch.cumsum(per_key, 0) - per_key)[keys]
    chunk = chunk_start[keys] + pos // _PAIR_CHUNK
    num_chunks = int(chunks_per_key.sum())
    out = []
    for value in values:
        table = torch.full((num_chunks, _PAIR_CHUNK), pad, dtype=torch.int64, device=keys.device)
        table[chunk, pos % _PAIR_CHUNK] = value[order]
        out.append(table)
    return out, torch.repeat_interleave(torch.arange(num_keys, device=keys.device), chunks_per_key)


def _row_ids(cols: Tensor) -> Tensor:
    """Dense ids 0..G-1 of the distinct rows of cols (R, K), one 1-D unique per column."""
    ids = torch.zeros_like(cols[:, 0])
    for k in range(cols.shape[1]):
        _, ids = torch.unique(ids * (int(cols[:, k].max()) + 1) + cols[:, k], return_inverse=True)
    return ids


def build_schur_structure(ne: NormalEquations) -> SchurStructure:
    """Group rows by camera columns and enumerate the row pairs that share a point."""
    n_c = ne.num_camera_parameters
    cols = ne.columns
    device = cols.device
    num_rows = cols.shape[0]
    group_of_row = _row_ids(cols)
    num_groups = int(group_of_row.max()) + 1 if num_rows else 0
    groups = cols.new_empty(num_groups, cols.shape[1])
    groups[group_of_row] = cols
    a, b = _row_pairs(ne.row_point, ne.num_points)
    ga, gb = group_of_row[a], group_of_row[b]
    keep = ga <= gb
    a, b, ga, gb = a[keep], b[keep], ga[keep], gb[keep]
    raw = torch.cat((group_of_row * (num_groups + 1), ga * num_groups + gb))
    unique_raw, inverse = torch.unique(raw, return_inverse=True)
    diag_keys, pair_keys = inverse[:num_rows], inverse[num_rows:]
    num_blocks = int(unique_raw.shape[0])
    (chunk_a, chunk_b), chunk_keys = _chunk(pair_keys, num_blocks, [a, b], num_rows)
    all_rows = torch.arange(num_rows, device=device)
    (row_chunks,), row_chunk_keys = _chunk(diag_keys, num_blocks, [all_rows], num_rows)
    block_ga, block_gb = unique_raw // num_groups, unique_raw % num_groups
    cols_a, cols_b = groups[block_ga], groups[block_gb]
    direct = cols_a[:, :, None] * (n_c + 1) + cols_b[:, None, :]
    transposed = cols_b[:, None, :] * (n_c + 1) + cols_a[:, :, None]
    off_diagonal = torch.nonzero(block_ga != block_gb).squeeze(1)
    scatter = torch.cat((direct.reshape(-1), transposed[off_diagonal].reshape(-1)))
    return SchurStructure(
        row_chunks, row_chunk_keys, chunk_a, chunk_b, chunk_keys, num_blocks, scatter, off_diagonal
    )


def _inverse_blocks(v: Tensor) -> Tensor:
    """Inverse of symmetric positive definite blocks (P, d, d); closed forms for d = 1 and 3."""
    d = v.shape[-1]
    if d == 1:
        return 1 / v
    if d == 3:
        a, b, c = v[:, 0, 0], v[:, 0, 1], v[:, 0, 2]
        e, f, i = v[:, 1, 1], v[:, 1, 2], v[:, 2, 2]
        c00 = e * i - f * f
        c01 = c * f - b * i
        c02 = b * f - c * e
        c11 = a * i - c * c
        c12 = b * c - a * f
        c22 = a * e - b * b
        inv_det = 1 / (a * c00 + b * c01 + c * c02)
        adj = torch.stack((c00, c01, c02, c01, c11, c12, c02, c12, c22), dim=-1).reshape(-1, 3, 3)
        return adj * inv_det[:, None, None]
    return torch.linalg.inv(v)


@dataclass(frozen=True)
class EliminatedPoints:
    """The point blocks eliminated from a damped system: what the back-substitution needs."""

    v_inv: Tensor
    """(P + 1, d, d) damped point-block inverses, zero dummy last."""
    y: Tensor
    """(R, K, d) W_i V^-1 per row."""
    rhs: Tensor
    """(n_c,) right-hand side of the reduced system."""
    diag_camera: Tensor
    """(n_c,) damping added to the camera diagonal."""


def _eliminate(ne: NormalEquations, damping: Damping) -> EliminatedPoints:
    n_c, d = ne.num_camera_parameters, ne.point_dim
    diag_p = torch.diagonal(ne.v, dim1=-2, dim2=-1).clamp(damping.min_diagonal, damping.max_diagonal)
    v_damped = ne.v + torch.diag_embed(damping.lam * diag_p)
    v_inv = torch.cat((_inverse_blocks(v_damped), ne.v.new_zeros(1, d, d)))
    y = small_matmul(ne.row_w, v_inv[ne.row_point])
    g_pad = torch.cat((ne.g_point, ne.g_point.new_zeros(1, d)))
    rhs = torch.cat((-ne.g_camera, ne.g_camera.new_zeros(1)))
    rhs.index_add_(0, ne.columns.reshape(-1), small_matvec(y, g_pad[ne.row_point]).reshape(-1))
    damp_c = damping.lam * ne.diag_camera.clamp(damping.min_diagonal, damping.max_diagonal)
    return EliminatedPoints(v_inv, y, rhs[:n_c], damp_c)


def _back_substitute(ne: NormalEquations, elim: EliminatedPoints, camera_step: Tensor) -> Tensor:
    num_p, d = ne.num_points, ne.point_dim
    cam = torch.cat((camera_step, camera_step.new_zeros(1)))
    t = torch.cat((-ne.g_point, ne.g_point.new_zeros(1, d)))
    wt_dc = small_matvec(ne.row_w.transpose(1, 2), cam[ne.columns])
    t.index_add_(0, ne.row_point, -wt_dc)
    return small_matvec(elim.v_inv, t)[:num_p]


def _workspace(structure: SchurStructure, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised buffer kept on the structure and reused by every solve of the same problem."""
    buffer = structure.workspace.get(name)
    if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
        buffer = like.new_empty(shape)
        structure.workspace[name] = buffer
    return buffer


def _gather(structure: SchurStructure, name: str, source: Tensor, index: Tensor) -> Tensor:
    """source[index.reshape(-1)] into a workspace buffer."""
    buffer = _workspace(structure, name, (index.numel(), source.shape[1]), source)
    return torch.index_select(source, 0, index.reshape(-1), out=buffer)


def _padded_rows(structure: SchurStructure, name: str, x: Tensor, transpose: bool) -> Tensor:
    """(R, a, b) -> (R + 1, a * b) in a workspace (rows transposed first when asked), last row zero."""
    rows = x.transpose(1, 2) if transpose else x
    buffer = _workspace(structure, name, (x.shape[0] + 1, *rows.shape[1:]), x)
    buffer[:-1].copy_(rows)
    buffer[-1].zero_()
    return buffer.reshape(x.shape[0] + 1, -1)


def _chunk_gram(structure: SchurStructure, name: str, left: Tensor, right: Tensor) -> Tensor:
    """Per chunk, left' right of gathered (num_chunks, chunk * inner, k) rows: (num_chunks, k * k)."""
    k = left.shape[2]
    out = _workspace(structure, name, (left.shape[0], k, k), left)
    return torch.bmm(left.transpose(1, 2), right, out=out).reshape(left.shape[0], k * k)


def reduced_camera_matrix(
    ne: NormalEquations, structure: SchurStructure, elim_y: Tensor, damp: Tensor
) -> Tensor:
    """Dense S = U + damping - W V^-1 W' of shape (n_c, n_c).

    Large intermediates live in workspace buffers on the structure: fresh allocations of several
    MB per solve cost more in page faults than the arithmetic on CPU.
    """
    n_c = ne.num_camera_parameters
    _, k, d = ne.row_w.shape
    m = ne.row_jacobian.shape[1]
    acc = ne.row_w.new_zeros(structure.num_blocks, k * k)
    jac = _padded_rows(structure, "jacobian", ne.row_jacobian, transpose=False)
    num_chunks, chunk = structure.row_chunks.shape
    jc = _gather(structure, "rows", jac, structure.row_chunks).reshape(num_chunks, chunk * m, k)
    acc.index_add_(0, structure.row_chunk_keys, _chunk_gram(structure, "u", jc, jc))
    yt = _padded_rows(structure, "y", elim_y, transpose=True)
    wt = _padded_rows(structure, "w", ne.row_w, transpose=True)
    num_chunks, chunk = structure.chunk_a.shape
    ya = _gather(structure, "a", yt, structure.chunk_a).reshape(num_chunks, chunk * d, k)
    wb = _gather(structure, "b", wt, structure.chunk_b).reshape(num_chunks, chunk * d, k)
    acc.index_add_(0, structure.chunk_keys, _chunk_gram(structure, "pairs", ya, wb), alpha=-1)
    values = torch.cat((acc.reshape(-1), acc.reshape(-1, k, k)[structure.off_diagonal].reshape(-1)))
    s = _workspace(structure, "s", ((n_c + 1) * (n_c + 1),), acc).zero_()
    s.index_add_(0, structure.scatter_index, values)
    return s.reshape(n_c + 1, n_c + 1)[:n_c, :n_c] + torch.diag(damp)


@dataclass(frozen=True)
class ReducedSystem:
    """The damped reduced camera system of one step, before its factorisation."""

    eliminated: EliminatedPoints
    """Point-block inverses, W V^-1 per row, right-hand side and camera damping."""
    matrix: Tensor
    """(n_c, n_c) dense S = U + damping - W V^-1 W'."""


def reduce_dense(ne: NormalEquations, structure: SchurStructure, damping: Damping) -> ReducedSystem:
    """Eliminate the point blocks and assemble the dense reduced camera matrix (no host sync)."""
    elim = _eliminate(ne, damping)
    return ReducedSystem(elim, reduced_camera_matrix(ne, structure, elim.y, elim.diag_camera))


def solve_reduced(system: ReducedSystem) -> tuple[Tensor, Tensor]:
    """Camera step (n_c,) by dense Cholesky and a 0-d bool, False when S is not positive definite.

    Does not wait for the device (the factorisation's status stays a tensor; the triangular solves
    are cuBLAS, not cuSOLVER's potrs). A failed factorisation gives a zero step.
    """
    chol, info = torch.linalg.cholesky_ex(system.matrix)
    ok = info == 0
    rhs = system.eliminated.rhs[:, None]
    half = torch.linalg.solve_triangular(chol, rhs, upper=False)
    dc = torch.linalg.solve_triangular(chol.T, half, upper=True)[:, 0]
    return torch.where(ok, dc, torch.zeros_like(dc)), ok


def back_substitute(ne: NormalEquations, system: ReducedSystem, camera_step: Tensor, ok: Tensor) -> Step:
    """The full step from the camera step: point step dp = V^-1 (-g_p - W' dc); zero when not ok."""
    dp = _back_substitute(ne, system.eliminated, camera_step)
    zero = torch.zeros((), dtype=torch.int64, device=ok.device)
    return Step(camera_step, torch.where(ok, dp, torch.zeros_like(dp)), ok, zero)


def solve_dense(ne: NormalEquations, structure: SchurStructure, damping: Damping) -> Step:
    """Damped step with the reduced camera system factored by dense Cholesky (no host sync)."""
    system = reduce_dense(ne, structure, damping)
    camera_step, ok = solve_reduced(system)
    return back_substitute(ne, system, camera_step, ok)


def _block_jacobi(ne: NormalEquations, elim: EliminatedPoints, block_size: int) -> Tensor:
    """Inverses (n_c / b, b, b) of S's diagonal blocks (exact when no two rows of a point share a block)."""
    n_c = ne.num_camera_parameters
    if n_c % block_size:
        raise BundleAdjustmentError(f"camera block size {block_size} does not divide {n_c} camera parameters")
    nb = n_c // block_size
    cols = ne.columns
    contrib = small_at_b(ne.row_jacobian, ne.row_jacobian) - small_matmul(elim.y, ne.row_w.transpose(1, 2))
    blk = cols // block_size
    pos = cols % block_size
    same = (blk[:, :, None] == blk[:, None, :]) & (cols[:, :, None] < n_c) & (cols[:, None, :] < n_c)
    flat = (blk[:, :, None] * block_size + pos[:, :, None]) * block_size + pos[:, None, :]
    blocks = contrib.new_zeros(nb * block_size * block_size)
    blocks.index_add_(0, flat[same], contrib[same])
    blocks = blocks.reshape(nb, block_size, block_size) + torch.diag_embed(
        elim.diag_camera.reshape(nb, block_size)
    )
    eye = torch.eye(block_size, dtype=blocks.dtype, device=blocks.device)
    empty = torch.diagonal(blocks, dim1=-2, dim2=-1).abs().sum(-1) == 0
    blocks = blocks + empty[:, None, None] * eye
    chol, _ = torch.linalg.cholesky_ex(blocks)
    return torch.cholesky_inverse(chol)


def solve_pcg(
    ne: NormalEquations, damping: Damping, block_size: int, max_iterations: int, tolerance: float
) -> Step:
    """Damped step by conjugate gradients on the implicit reduced system (never formed)."""
    n_c = ne.num_camera_parameters
    elim = _eliminate(ne, damping)
    precond = _block_jacobi(ne, elim, block_size)
    cols = ne.columns
    flat_cols = cols.reshape(-1)

    def matvec(x: Tensor) -> Tensor:
        xp = torch.cat((x, x.new_zeros(1)))
        xg = xp[cols]
        out = xp.new_zeros(n_c + 1)
        jx = small_matvec(ne.row_jacobian, xg)
        out.index_add_(0, flat_cols, small_matvec(ne.row_jacobian.transpose(1, 2), jx).reshape(-1))
        t = xp.new_zeros(ne.num_points + 1, ne.point_dim)
        t.index_add_(0, ne.row_point, small_matvec(ne.row_w.transpose(1, 2), xg))
        out.index_add_(0, flat_cols, -small_matvec(elim.y, t[ne.row_point]).reshape(-1))
        return out[:n_c] + elim.diag_camera * x

    def apply_precond(r: Tensor) -> Tensor:
        return small_matvec(precond, r.reshape(precond.shape[0], -1)).reshape(-1)

    b = elim.rhs
    x = torch.zeros_like(b)
    r = b.clone()
    z = apply_precond(r)
    p = z.clone()
    rz = (r * z).sum()
    threshold = tolerance * float(b.norm())
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        ap = matvec(p)
        pap = (p * ap).sum()
        if float(pap) <= 0:
            return Step(
                torch.zeros_like(b), torch.zeros_like(ne.g_point), _flag(False, b), _count(iterations, b)
            )
        alpha = rz / pap
        x = x + alpha * p
        r = r - alpha * ap
        if float(r.norm()) <= threshold:
            break
        z = apply_precond(r)
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return Step(x, _back_substitute(ne, elim, x), _flag(True, b), _count(iterations, b))


def _flag(value: bool, like: Tensor) -> Tensor:
    return torch.tensor(value, device=like.device)


def _count(value: int, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=torch.int64, device=like.device)
