"""Prefect flows wrapping the pipeline stages, deployments and the command line."""
