"""Azure ML: compile `dvc.yaml` into pipeline YAML, run stages there unchanged, submit.

Kept free of heavy imports: the stage wrapper runs from this package on the compute.
"""

DEFAULT_OUT = "pipelines/azureml"  # where `compile` writes, relative to the repository root
