"""branchflow: GitOps CI/CD for machine-learning pipelines built on DVC and MLflow."""

__version__ = "0.1.0"
