"""`branchflow init`: a DVC project's CI, detected once and then generated from its config.

`detect` reads how a project installs, lints and tests into a `[tool.branchflow.ci]` table;
`workflows` renders `.github/` from the settings and the project's pipelines (one PR build per
`dvc.yaml`, with path filters from each pipeline's dependencies).
"""
