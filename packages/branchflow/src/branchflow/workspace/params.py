"""Setting params before a run, as `dvc exp run -S` does, through DVC's own parser and writer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from branchflow.errors import BranchflowError
from branchflow.files import inside


def set_params(root: Path, values: Sequence[str]) -> None:
    """Write each `[FILE:]KEY=VALUE` (FILE: `params.yaml` unless named) into its params file,
    one at a time, so a bad value is named on its own."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    for value in values:
        for path, overrides in to_path_overrides([value]).items():
            file = inside(root, root / path)
            if not file.is_file():
                raise BranchflowError(f"-S {value}: {path} does not exist")
            try:
                apply_overrides(file, overrides)
            except DvcException as exc:
                raise BranchflowError(
                    f"-S {value}: {exc}; give [FILE:]KEY=VALUE, as `dvc exp run -S` takes it"
                ) from None
