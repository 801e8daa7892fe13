"""Options of the Levenberg-Marquardt solver (``dv4d.ba.lm.solve_lm``)."""

from dataclasses import dataclass
from typing import Literal

from dv4d.ba.errors import BundleAdjustmentError


@dataclass(frozen=True)
class LMConfig:
    """Levenberg-Marquardt options; defaults are Ceres' defaults."""

    max_iterations: int = 50
    """Maximum number of iterations (accepted or rejected steps)."""
    function_tolerance: float = 1e-6
    """Stop when |cost change| <= function_tolerance * cost."""
    gradient_tolerance: float = 1e-10
    """Stop when the max-norm of the gradient J'r is at most this."""
    parameter_tolerance: float = 1e-8
    """Stop when |step| <= parameter_tolerance * (|x| + parameter_tolerance)."""
    initial_trust_region_radius: float = 1e4
    """Initial radius (the damping is its inverse)."""
    max_trust_region_radius: float = 1e16
    """Upper bound on the radius."""
    min_trust_region_radius: float = 1e-32
    """Stop when the radius falls below this."""
    min_relative_decrease: float = 1e-3
    """Accept a step when actual/model decrease exceeds this."""
    min_diagonal: float = 1e-6
    """Lower clamp of diag(J'J) in the damping."""
    max_diagonal: float = 1e32
    """Upper clamp of diag(J'J) in the damping."""
    linear_solver: Literal["auto", "dense", "pcg"] = "auto"
    """Reduced camera system: dense Cholesky, PCG, or auto (dense up to dense_max_camera_parameters)."""
    dense_max_camera_parameters: int = 3000
    """Largest camera side solved densely under "auto"."""
    pcg_max_iterations: int = 500
    """Conjugate-gradient iteration cap per step."""
    pcg_tolerance: float = 1e-8
    """Relative residual at which conjugate gradients stop."""
    cuda_graphs: bool = True
    """On CUDA with the dense reduced-camera solver, capture the iteration (linearisation; step,
    candidate cost and accept / reject) in two CUDA graphs after a first eager iteration and replay
    them, one host synchronisation per iteration. No effect on CPU, and none with the PCG solver
    (its iteration count is decided on the host): ``LMResult.cuda_graphs`` says whether graphs ran.
    A problem whose evaluate or retract waits for the device cannot be captured: the solve then
    raises ``CudaGraphCaptureError``; set False to launch kernels one by one."""
    fixed_camera_parameters: tuple[int, ...] = ()
    """Camera-side parameter indices held at their starting values, to fix the gauge explicitly
    (e.g. ``tuple(range(6))``: the first BAL camera's rotation and translation, or the first free
    keyframe's pose in the dense problem). Empty (default): every parameter is free and the gauge
    freedom (7 DoF for BAL: rotation, translation, scale) is left to the damping, as Ceres does."""

    def __post_init__(self) -> None:
        if self.max_iterations < 0:
            raise BundleAdjustmentError(f"max_iterations must be >= 0, got {self.max_iterations}")
        if self.linear_solver not in ("auto", "dense", "pcg"):
            raise BundleAdjustmentError(f"unknown linear solver {self.linear_solver!r}")
        if len(set(self.fixed_camera_parameters)) != len(self.fixed_camera_parameters):
            raise BundleAdjustmentError("fixed_camera_parameters has repeated indices")
