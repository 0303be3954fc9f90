"""An Azure ML workspace answering azure-ai-ml's own REST calls in-process, for `MLClient`.

`MLClient(credential, ..., transport=workspace.transport())` runs the SDK unchanged (its
operations, serialisation, azure-core's requests transport and long-running-operation polling);
only the HTTP round trip stays in the process, through a `requests` adapter. Bodies have the
shapes of the Azure ML REST API, so what the SDK sends can be asserted request by request.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter
from urllib3.response import HTTPResponse

SUBSCRIPTION, GROUP, WORKSPACE, LOCATION = "sub-1", "rg-ml", "ws-ml", "westeurope"
API = f"{LOCATION}.api.azureml.ms"  # the region's data plane (run history)
WORKSPACE_IDS = (SUBSCRIPTION, GROUP, WORKSPACE)
SCOPE = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)


class Credential:
    """A token credential whose tokens last an hour (what the SDK's pipeline asks for)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("token", int(time.time()) + 3600)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None


@dataclass
class Workspace(BaseAdapter):
    """The workspace's state: VM sizes of its region (name -> GPUs), clusters by name and
    environments by name:version (REST bodies), jobs by name (their status, in turn: each GET
    takes the next, the last stays; a number answers that HTTP error instead, and "Ctrl-C"
    interrupts the poll as the user's key would)."""

    sizes: dict[str, int]
    computes: dict[str, dict[str, Any]] = field(default_factory=dict)
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)  # name:version -> body
    jobs: dict[str, list[str | int]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # listed jobs (`past_job`)
    children: dict[str, dict[str, bool]] = field(default_factory=dict)  # job -> node: reused
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def transport(self) -> RequestsTransport:
        """azure-core's own transport over a session whose HTTPS requests come here."""
        session = requests.Session()
        session.mount("https://", self)
        return RequestsTransport(session=session, session_owner=False)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlparse(request.url)
        body = json.loads(request.body) if request.body else None
        method = str(request.method)
        query = parse_qs(url.query)
        self.requests.append(Request(method, url.path, query, body))
        status, answer = self._answer(method, url.path, query, body)
        content = json.dumps(answer).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(content))}
        response = requests.Response()
        response.status_code, response.request, response.url = status, request, request.url
        response.headers.update(headers)
        response.reason = "OK" if status < 400 else "Error"
        response.raw = HTTPResponse(
            body=io.BytesIO(content), headers=headers, status=status, preload_content=False
        )
        return response

    def close(self) -> None:
        pass

    def _answer(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, dict[str, Any]]:
        if path == SCOPE and method == "GET":
            properties = {"discoveryUrl": f"https://{API}/discovery"}
            return 200, {"id": SCOPE, "name": WORKSPACE, "location": LOCATION} | {
                "properties": properties
            }
        if path == "/discovery":
            return 200, {"api": f"https://{API}", "history": f"https://{API}"}
        if path.endswith("/children"):  # run history: the pipeline's steps
            nodes = self.children.get(path.split("/")[-2], {})
            return 200, {"value": [_child(node, reused) for node, reused in nodes.items()]}
        if path == f"{SCOPE}/jobs" and method == "GET":  # `tag`: jobs that have this tag key
            keys = query.get("tag", [])
            listed = [j for j in self.history if all(k in j["properties"]["tags"] for k in keys)]
            return 200, {"value": listed}
        if path.endswith(f"/locations/{LOCATION}/vmSizes"):
            return 200, {"value": [_size(name, gpus) for name, gpus in self.sizes.items()]}
        found = re.fullmatch(re.escape(SCOPE) + r"/computes/([^/]+)", path)
        if found:
            name = found.group(1)
            if method == "PUT":
                self.computes[name] = _succeeded(name, body)
            if name not in self.computes:
                return 404, _error("ResourceNotFound", f"compute {name} not found")
            return 200, self.computes[name]
        found = re.fullmatch(re.escape(SCOPE) + r"/environments/([^/]+)/versions/([^/]+)", path)
        if found:
            key = f"{found.group(1)}:{found.group(2)}"
            if method == "PUT":
                self.environments[key] = {**body, "id": path, "name": found.group(2)}
            if key not in self.environments:
                return 404, _error("ResourceNotFound", f"environment {key} not found")
            return 200, self.environments[key]
        found = re.fullmatch(re.escape(SCOPE) + r"/jobs/([^/]+)(/cancel)?", path)
        if found and found.group(2):
            self.jobs[found.group(1)] = ["CancelRequested"]
            return 200, {}
        if found:
            statuses = self.jobs[found.group(1)]
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            if isinstance(status, int):  # the service refusing the poll
                return status, _error("Refused", f"HTTP {status} for the test")
            if status == "Ctrl-C":  # the user interrupting `submit --wait` during this poll
                statuses[0] = "Running"
                raise KeyboardInterrupt
            return 200, _job(found.group(1), status)
        return 404, _error("NotFound", f"the test workspace does not answer {method} {path}")


def cluster(name: str, size: str, max_instances: int, tier: str = "Dedicated") -> dict[str, Any]:
    """An existing AmlCompute cluster's REST body."""
    return _succeeded(
        name,
        {
            "properties": {
                "computeType": "AmlCompute",
                "properties": {
                    "vmSize": size,
                    "vmPriority": tier,
                    "scaleSettings": {
                        "minNodeCount": 0,
                        "maxNodeCount": max_instances,
                        "nodeIdleTimeBeforeScaleDown": "PT1800S",
                    },
                },
            }
        },
    )


def past_job(
    name: str, experiment: str, status: str, tags: dict[str, str], created: str
) -> dict[str, Any]:
    """A pipeline job as the service lists it (`created`: an ISO time)."""
    return {
        "id": f"{SCOPE}/jobs/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/jobs",
        "systemData": {"createdAt": created, "createdBy": "ci", "createdByType": "Application"},
        "properties": {
            "jobType": "Pipeline",
            "status": status,
            "experimentName": experiment,
            "tags": tags,
            "jobs": {},
            "inputs": {},
            "outputs": {},
            "settings": {},
        },
    }


def _child(node: str, reused: bool) -> dict[str, Any]:
    """A pipeline step as run history lists it; a reused one carries Azure ML's flag."""
    properties = {"azureml.isreused": "true"} if reused else {}
    return {"runId": f"step-{node}", "displayName": node, "status": "Completed"} | {
        "properties": properties
    }


def _succeeded(name: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = {**body, "id": f"{SCOPE}/computes/{name}", "name": name, "location": LOCATION}
    answer["properties"] = {**body["properties"], "provisioningState": "Succeeded"}
    return answer


def _size(name: str, gpus: int) -> dict[str, Any]:
    return {
        "name": name,
        "family": "standardNCASv3_T4Family" if gpus else "standardDSv2Family",
        "vCPUs": 4,
        "gpus": gpus,
        "memoryGB": 28.0,
        "lowPriorityCapable": True,
        "premiumIO": True,
        "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
    }


def _job(name: str, status: str) -> dict[str, Any]:
    return {
        "id": f"{SCOPE}/jobs/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/jobs",
        "properties": {
            "jobType": "Command",
            "status": status,
            "command": "echo",
            "environmentId": f"{SCOPE}/environments/env/versions/1",
            "experimentName": "default",
        },
    }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
