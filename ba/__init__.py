"""Bundle adjustment: Lie groups, cameras, robust losses, Levenberg-Marquardt with Schur complement.

Pure torch, the same code on CPU and CUDA. Entry points:

- ``dv4d.ba.lm.solve_lm(problem, state, LMConfig)`` minimises any ``dv4d.ba.problem.LeastSquaresProblem``
  (Ceres-style LM, Schur elimination of point / depth blocks, dense Cholesky or PCG). The iteration
  runs on the device with one host read per iteration (``dv4d.ba.iteration``) and, on CUDA, is
  replayed from CUDA graphs (``dv4d.ba.cuda_graph``, ``LMConfig.cuda_graphs``); the gauge is left
  to the damping or fixed explicitly (``LMConfig.fixed_camera_parameters``).
- ``dv4d.ba.dense.solve_window(...)`` refines keyframe poses, low-resolution inverse depth and the shared
  focal from flow correspondences and a depth prior, for a chosen subset of frames.
- ``dv4d.ba.bal.read_bal`` / ``dv4d.ba.bal_problem.BalProblem`` / ``dv4d.ba.bench.run_bal_benchmark``:
  the BAL benchmark; ``dv4d.ba.ceres_reference`` runs Ceres (through pycolmap) on the same file.
"""
