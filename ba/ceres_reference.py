"""Ceres reference for the BAL benchmark, through COLMAP's bundle adjuster (pycolmap embeds Ceres).

The BAL problem is mapped exactly onto COLMAP's RADIAL camera: BAL projects p = -P[:2] / P[2]
with points at negative depth. Mirroring the world and every camera frame by M = diag(1, 1, -1)
(X' = M X, R' = M R M, t' = M t, a proper rotation) gives P' = M P, so P'[:2] / P'[2] = p with
positive depth and the same residuals; camera params are (f, 0, 0, k1, k2). Every
parameter is free (no gauge fixing, principal point fixed at 0 as in BAL), trivial loss, Levenberg-
Marquardt with SPARSE_SCHUR and Ceres' default tolerances. Ceres rotates with quaternions on a
manifold instead of BAL's additive angle-axis, which moves the iterates slightly. One real
difference: COLMAP's reprojection cost is zero for a point behind its camera, so observations with
positive BAL depth drop out (31 of Ladybug-49's, 110.37 of its initial cost: Ceres through COLMAP
ends at 1.33085e4 where plain Ceres with every observation, and dv4d, end at 1.33443e4).

Run: ``python -m dv4d.ba.ceres_reference problem-49-7776-pre.txt [--threads 2] [--max-iterations 50]``.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dv4d.ba.bal import BalData, read_bal
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.lie import so3_exp


def _reconstruction(data: BalData) -> Any:
    try:
        import pycolmap
    except ImportError as exc:
        raise BundleAdjustmentError(
            "the Ceres reference needs pycolmap (which embeds Ceres): pip install pycolmap"
        ) from exc
    mirror = np.diag([1.0, 1.0, -1.0])
    rotations = so3_exp(data.cameras[:, :3]).numpy()
    cams = data.cameras.numpy()
    obs = data.observations.numpy()
    cam_idx = data.camera_index.numpy()
    pt_idx = data.point_index.numpy()
    order = np.argsort(cam_idx, kind="stable")
    counts = np.bincount(cam_idx, minlength=data.num_cameras)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    keypoint_of_obs = np.empty_like(order)
    keypoint_of_obs[order] = np.arange(order.size) - np.repeat(starts, counts)
    extent = int(np.ceil(np.abs(obs).max())) * 2 + 2
    rec = pycolmap.Reconstruction()
    for i in range(data.num_cameras):
        f, k1, k2 = cams[i, 6:9]
        camera = pycolmap.Camera(
            model="RADIAL", width=extent, height=extent, params=[f, 0.0, 0.0, k1, k2], camera_id=i + 1
        )
        rec.add_camera_with_trivial_rig(camera)
        mine = order[starts[i] : starts[i] + counts[i]]
        image = pycolmap.Image(name=f"camera{i}", keypoints=obs[mine], camera_id=i + 1, image_id=i + 1)
        pose = np.concatenate((mirror @ rotations[i] @ mirror, (mirror @ cams[i, 3:6])[:, None]), axis=1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pose))
    obs_by_point = np.argsort(pt_idx, kind="stable")
    point_counts = np.bincount(pt_idx, minlength=data.num_points)
    point_starts = np.concatenate(([0], np.cumsum(point_counts)[:-1]))
    points = data.points.numpy() @ mirror
    for p in range(data.num_points):
        mine = obs_by_point[point_starts[p] : point_starts[p] + point_counts[p]]
        track = pycolmap.Track(
            [pycolmap.TrackElement(int(cam_idx[o]) + 1, int(keypoint_of_obs[o])) for o in mine]
        )
        rec.add_point3D(points[p], track)
    return rec


def run_ceres_bal(data: BalData, max_iterations: int = 50, num_threads: int = 2) -> dict[str, Any]:
    """Solve a BAL problem with Ceres (LM + SPARSE_SCHUR); returns costs, iterations and solve seconds.

    ``seconds`` is wall time, ``cpu_seconds`` the process CPU time of the solve (all threads), which
    a machine shared with other busy processes inflates far less than wall time.
    """
    import pycolmap

    rec = _reconstruction(data)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = False
    options.refine_focal_length = True
    options.refine_extra_params = True
    options.print_summary = False
    ceres = options.ceres
    ceres.auto_select_solver_type = False
    ceres.min_num_residuals_for_cpu_multi_threading = 0
    solver = ceres.solver_options
    solver.linear_solver_type = type(solver.linear_solver_type).SPARSE_SCHUR
    solver.num_threads = num_threads
    solver.max_num_iterations = max_iterations
    solver.function_tolerance = 1e-6
    solver.gradient_tolerance = 1e-10
    solver.parameter_tolerance = 1e-8
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.UNSPECIFIED)
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = adjuster.solve().ceres_summary
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "problem": data.name,
        "solver": "ceres (pycolmap)",
        "initial_cost": summary.initial_cost,
        "final_cost": summary.final_cost,
        "iterations": summary.num_successful_steps + summary.num_unsuccessful_steps,
        "successful_steps": summary.num_successful_steps,
        "seconds": wall,
        "cpu_seconds": cpu,
        "ceres_total_seconds": summary.total_time_in_seconds,
        "threads": num_threads,
        "termination": str(summary.termination_type),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the Ceres result for one BAL file as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-iterations", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        result = run_ceres_bal(read_bal(args.file), args.max_iterations, args.threads)
    except BundleAdjustmentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
