"""branchflow: GitOps CI/CD for machine-learning pipelines built on DVC and MLflow."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("branchflow")  # one place: packages/branchflow/pyproject.toml
except PackageNotFoundError:  # a source checkout run without site-packages: the comment job's
    __version__ = "unknown"  # renderer (`python -S -m branchflow.render`), which never shows it
