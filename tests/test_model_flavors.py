"""`[tool.branchflow.model]` flavors against a real MLflow server: the pickled scikit-learn
estimator of `tests/sklearn_project.py` and a tiny torch model register without a serving
wrapper and load back with `mlflow.pyfunc`; the flavor settings reject mistakes in one line."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest

from branchflow.errors import BranchflowError
from branchflow.registry.register import register
from branchflow.settings import load_settings
from tests.conftest import on
from tests.sklearn_project import EXAMPLE, MODEL, PYPROJECT

TORCH_MODEL = "models/linear.pt"
TORCH_TABLE = f"""\
[tool.branchflow.model]
flavor = "pytorch"
artifacts = {{ model = "{TORCH_MODEL}" }}
input_example = "examples/x32.npy"
pip_requirements = ["mlflow-skinny", "torch", "numpy"]

[tool.branchflow.model.signature]
inputs = [{{ type = "tensor", tensor-spec = {{ dtype = "float32", shape = [-1, 2] }} }}]
outputs = [{{ type = "tensor", tensor-spec = {{ dtype = "float32", shape = [-1, 1] }} }}]
"""


@pytest.fixture
def repo(sklearn_repo: Path, copy_repo: Callable[[Path], Path]) -> Path:
    return copy_repo(sklearn_repo)


@pytest.mark.usefixtures("registry_env")
def test_a_pickled_estimator_registers_and_serves_as_pickled(
    repo: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without skops (MLflow's default serialisation, which branchflow does not install)."""
    monkeypatch.setitem(sys.modules, "skops", None)  # `import skops` now fails, as uninstalled
    first = register(repo, on("sklearn/flavor"))
    again = register(repo, on("sklearn/flavor"))
    assert (first.created, again.created, again.version) == (True, False, first.version)
    uri = f"models:/{first.model}/{first.version}"
    assert mlflow.models.get_model_info(uri).flavors.keys() >= {"sklearn", "python_function"}
    rows = np.array([[0.05, 0.1], [0.95, 0.9], [0.5, 0.5], [0.3, 0.8]])
    estimator = pickle.loads((repo / MODEL).read_bytes())
    served = mlflow.pyfunc.load_model(uri).predict(rows)
    assert served.tolist() == estimator.predict(rows).tolist() != [0, 0, 0, 0]
    assert client.get_model_version(first.model, first.version).tags["metric.accuracy"] == "1.0"


@pytest.mark.usefixtures("registry_env")
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")  # it still ships
@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file:UserWarning")  # MLflow's
@pytest.mark.parametrize("scripted", [False, True], ids=["torch.save", "torchscript"])
def test_a_torch_model_registers_and_serves_its_outputs(repo: Path, scripted: bool) -> None:
    import torch

    torch.manual_seed(0)
    linear = torch.nn.Linear(2, 1)
    (repo / TORCH_MODEL).parent.mkdir()
    if scripted:
        torch.jit.script(linear).save(repo / TORCH_MODEL)
    else:
        torch.save(linear, repo / TORCH_MODEL)
    rows = np.array([[0.0, 1.0], [2.0, -1.0]], dtype=np.float32)
    np.save(repo / "examples/x32.npy", rows)
    (repo / "pyproject.toml").write_text(TORCH_TABLE)

    registration = register(repo, on(f"torch/{scripted}"))
    served = mlflow.pyfunc.load_model(f"models:/{registration.model}/{registration.version}")
    with torch.no_grad():
        expected = linear(torch.from_numpy(rows)).numpy()
    assert np.allclose(served.predict(rows), expected)


@pytest.mark.usefixtures("registry_env")
def test_a_file_that_is_not_the_flavors_model_fails_before_logging(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    (repo / MODEL).write_bytes(b"not a pickle")
    with pytest.raises(BranchflowError, match=f"artifacts {MODEL}: not a pickled estimator"):
        register(repo, on("sklearn/garbage"))
    assert client.search_registered_models("name LIKE '%sklearn-garbage%'") == []


@pytest.mark.usefixtures("registry_env")
def test_a_flavor_whose_package_is_missing_names_it_before_logging(
    repo: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails, as uninstalled
    with pytest.raises(BranchflowError, match="flavor sklearn needs the scikit-learn package"):
        register(repo, on("sklearn/missing"))
    assert client.search_registered_models("name LIKE '%sklearn-missing%'") == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('flavor = "onnx"\nartifacts = { model = "m" }', "flavor must be one of pyfunc, sklearn"),
        ('flavor = "pyfunc"\nartifacts = { model = "m" }', "needs python_model"),
        (
            'flavor = "sklearn"\npython_model = "s.py"\nartifacts = { model = "m" }',
            "python_model is for flavor pyfunc",
        ),
        ('flavor = "sklearn"', "flavor sklearn needs one artifact, a pickled estimator"),
        (
            'flavor = "pytorch"\nartifacts = { a = "a.pt", b = "b.pt" }',
            "flavor pytorch needs one artifact",
        ),
    ],
)
def test_flavor_settings_reject_mistakes(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.branchflow.model]\n{table}\n")
    with pytest.raises(BranchflowError, match=message):
        load_settings(tmp_path)


def test_python_model_alone_means_pyfunc_and_the_fixture_is_sklearn(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.branchflow.model]\npython_model = "s.py"\nartifacts = { model = "m" }\n'
    )
    assert load_settings(tmp_path).model.flavor == "pyfunc"
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    model = load_settings(tmp_path).model
    assert (model.flavor, model.python_model, model.input_example) == ("sklearn", None, EXAMPLE)
