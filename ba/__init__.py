"""Bundle adjustment: Lie groups, cameras, robust losses, Levenberg-Marquardt with Schur complement."""
