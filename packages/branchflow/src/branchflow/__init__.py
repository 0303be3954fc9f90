"""branchflow: GitOps CI/CD for machine-learning pipelines built on DVC and MLflow."""

from importlib.metadata import version

__version__ = version("branchflow")  # one place: packages/branchflow/pyproject.toml
