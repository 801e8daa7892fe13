"""CPU/CUDA agreement of the solver (skipped without CUDA)."""

import pytest
import torch

from dv4d.ba.bal_problem import BalProblem
from dv4d.ba.dense import DenseState, FlowCorrespondences, solve_window
from dv4d.ba.lm import LMConfig, solve_lm
from dv4d.ba.synthetic import make_synthetic_bal, make_synthetic_dense_scene, perturb_dense_state

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("solver", ["dense", "pcg"])
def test_cpu_cuda_agree_float64(solver: str) -> None:
    syn = make_synthetic_bal(10, 400, 4, seed=5)
    config = LMConfig(linear_solver=solver)  # type: ignore[arg-type]
    cpu_problem = BalProblem(syn.start)
    gpu_problem = BalProblem(syn.start.to("cuda", torch.float64))
    cpu = solve_lm(cpu_problem, cpu_problem.initial_state(), config)
    gpu = solve_lm(gpu_problem, gpu_problem.initial_state(), config)
    assert len(cpu.iterations) == len(gpu.iterations)
    for a, b in zip(cpu.iterations, gpu.iterations, strict=True):
        assert a.accepted == b.accepted
        assert a.cost == pytest.approx(b.cost, rel=1e-8)
    assert torch.allclose(gpu.state.points.cpu(), cpu.state.points, atol=1e-6)


def test_cuda_float32_reaches_float64_cost() -> None:
    syn = make_synthetic_bal(10, 400, 4, seed=6)
    p64 = BalProblem(syn.start)
    p32 = BalProblem(syn.start.to("cuda", torch.float32))
    r64 = solve_lm(p64, p64.initial_state())
    r32 = solve_lm(p32, p32.initial_state())
    assert r32.final_cost == pytest.approx(r64.final_cost, rel=1e-3)


def test_dense_window_cpu_cuda_agree() -> None:
    scene = make_synthetic_dense_scene(4)
    corr, prior, size, principal = (
        scene.correspondences,
        scene.truth.inv_depth,
        scene.image_size,
        scene.principal,
    )
    start = perturb_dense_state(scene.truth, [1, 2, 3])
    cpu = solve_window(start, corr, prior, [1, 2, 3], size, principal)

    def cuda(x: torch.Tensor) -> torch.Tensor:
        return x.to("cuda")

    gpu_start = DenseState(cuda(start.c2w), cuda(start.inv_depth), cuda(start.focal))
    gpu_corr = FlowCorrespondences(
        *(
            cuda(t)
            for t in (corr.source_frame, corr.source_pixel, corr.target_frame, corr.target_uv, corr.weight)
        )
    )
    gpu = solve_window(gpu_start, gpu_corr, cuda(prior), [1, 2, 3], size, cuda(principal))
    assert len(gpu.solve.iterations) == len(cpu.solve.iterations)
    assert gpu.solve.final_cost == pytest.approx(cpu.solve.final_cost, rel=1e-6, abs=1e-12)
    assert torch.allclose(gpu.state.c2w.cpu(), cpu.state.c2w, atol=1e-9)
    assert torch.allclose(gpu.state.inv_depth.cpu(), cpu.state.inv_depth, atol=1e-9)
