"""Bundle adjustment: Lie groups, cameras, robust losses, Levenberg-Marquardt with Schur complement.

Pure torch, the same code on CPU and CUDA. Entry points:

- ``dv4d.ba.lm.solve_lm(problem, state, LMConfig)`` minimises any ``dv4d.ba.problem.LeastSquaresProblem``
  (Ceres-style LM, Schur elimination of point / depth blocks, dense Cholesky or PCG).
- ``dv4d.ba.dense.solve_window(...)`` refines keyframe poses, low-resolution inverse depth and the shared
  focal from flow correspondences and a depth prior, for a chosen subset of frames.
- ``dv4d.ba.bal.read_bal`` / ``dv4d.ba.bal_problem.BalProblem`` / ``dv4d.ba.bench.run_bal_benchmark``:
  the BAL benchmark; ``dv4d.ba.ceres_reference`` runs Ceres (through pycolmap) on the same file.
"""
