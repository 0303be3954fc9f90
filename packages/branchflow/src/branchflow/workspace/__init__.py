"""The workspace: what git, the CI system and DVC say about the checkout being built, and every
name derived from it. Nothing here writes to MLflow or reads a report."""
