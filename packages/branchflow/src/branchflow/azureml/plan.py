"""Which nodes Azure ML will reuse and which it will rerun, and why, before a submit.

Azure ML reuses a node when its component's code snapshot, its environment, its inputs and
parameters and its run settings are those of an earlier successful run, and it is
deterministic; a node downstream of one that reruns gets new inputs, so it reruns too. Each
node's `NodeState` holds exactly those parts: `stage` (its `dvc_stage_hash`: cmd, params,
deps, the data's DVC md5s, upstream stages), `code` (its snapshot but the wrapper), `wrapper`,
`environment` and `settings`. `submit` records them as tags of the pipeline job; `plan`
compares the tree's states with those of the last completed job of the branch's experiment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from branchflow.azureml.compile import upstream_jobs
from branchflow.azureml.snapshot import WRAPPER_FILE, snapshot_files
from branchflow.workspace.dag import Step

PLAN_TAG = "branchflow.plan"  # present on every job `submit` records node states for
NODE_TAG = "branchflow.node."  # + node name: its `NodeState.tag()`
REASONS = {
    "stage": "its DVC stage changed (cmd, params, deps or data)",
    "code": "its code changed",
    "wrapper": "the stage wrapper changed (a branchflow upgrade)",
    "environment": "its environment changed (the lock or the base image)",
    "settings": "its run settings changed (compute, nodes, processes, timeout, variables)",
}
_RUN_SETTINGS = ("compute", "resources", "distribution", "limits", "environment_variables")


@dataclass(frozen=True)
class NodeState:
    """What Azure ML's reuse of one node depends on, each part as a short digest."""

    stage: str
    code: str
    wrapper: str
    environment: str
    settings: str
    deterministic: bool

    def tag(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)][:-1]
        return ";".join([*parts, f"deterministic={str(self.deterministic).lower()}"])

    @classmethod
    def from_tag(cls, text: str) -> NodeState | None:
        """The state a tag records, or None for a tag this version cannot read."""
        parts = dict(part.partition("=")[::2] for part in text.split(";"))
        names = [f.name for f in fields(cls)]
        if sorted(parts) != sorted(names):
            return None
        deterministic = parts.pop("deterministic") == "true"
        return cls(**parts, deterministic=deterministic)


@dataclass(frozen=True)
class Verdict:
    """One node of the plan: rerun or reused, and why."""

    node: str
    rerun: bool
    reason: str

    def line(self) -> str:
        return f"{'rerun ' if self.rerun else 'reuse '} {self.node}: {self.reason}"


def node_states(
    root: Path,
    steps: Sequence[Step],
    jobs: Mapping[str, Mapping[str, Any]],
    components: Mapping[str, Mapping[str, Any]],
    default: str,
) -> dict[str, NodeState]:
    """Each node's state, in the pipeline's order: `jobs` are its nodes (a stage, or one of
    its shards), their `component` a path named by the stage's node, whose document
    `components` holds."""
    snapshots = {step.node: snapshot_files(root, step) for step in steps}
    states = {}
    for name, job in jobs.items():
        component = components[job["component"]]
        files = dict(snapshots[Path(job["component"]).stem])
        wrapper = files.pop(WRAPPER_FILE)
        settings: dict[str, Any] = {key: job[key] for key in _RUN_SETTINGS if key in job}
        settings.setdefault("compute", default)
        settings["literals"] = {  # a shard's index and count
            key: value
            for key, value in job["inputs"].items()
            if key != "dvc_stage_hash" and "${{" not in str(value)
        }
        states[name] = NodeState(
            stage=str(job["inputs"]["dvc_stage_hash"])[:16],
            code=_digest({path: _sha(content) for path, content in sorted(files.items())}),
            wrapper=_sha(wrapper)[:16],
            environment=str(component["environment"]).removeprefix("azureml:"),
            settings=_digest(settings),
            deterministic=component.get("is_deterministic", True) is not False,
        )
    return states


def upstream_nodes(jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Each node's direct upstream nodes: those whose outputs its inputs bind."""
    return {name: tuple(sorted(upstream_jobs(job))) for name, job in jobs.items()}


def tags(states: Mapping[str, NodeState]) -> dict[str, str]:
    """The pipeline job's tags that record its nodes' states."""
    return {PLAN_TAG: "1", **{f"{NODE_TAG}{node}": s.tag() for node, s in states.items()}}


def recorded(job_tags: Mapping[str, str]) -> dict[str, NodeState]:
    """The node states a job's tags record (`tags`), those this version can read."""
    states = {}
    for key, value in job_tags.items():
        state = NodeState.from_tag(value) if key.startswith(NODE_TAG) else None
        if state is not None:
            states[key.removeprefix(NODE_TAG)] = state
    return states


def plan(
    states: Mapping[str, NodeState],
    upstream: Mapping[str, Sequence[str]],
    last: Mapping[str, NodeState] | None,
) -> list[Verdict]:
    """Every node, upstream first (the order of `states`), reused or rerun and why."""
    verdicts: dict[str, Verdict] = {}
    for node, state in states.items():
        before = None if last is None else last.get(node)
        changed = [f for f in REASONS if before and getattr(state, f) != getattr(before, f)]
        rerun_upstream = [name for name in upstream.get(node, ()) if verdicts[name].rerun]
        if last is None:
            reason = "no completed run of this branch's pipeline to reuse"
        elif before is None:
            reason = "a new node"
        elif not state.deterministic:
            reason = "not deterministic (always_changed in dvc.yaml)"
        elif changed:
            reason = "; ".join(REASONS[name] for name in changed)
        elif rerun_upstream:
            reason = f"upstream {', '.join(rerun_upstream)} reruns"
        else:
            verdicts[node] = Verdict(node, False, "unchanged")
            continue
        verdicts[node] = Verdict(node, True, reason)
    return list(verdicts.values())


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _digest(value: object) -> str:
    return _sha(json.dumps(value, sort_keys=True).encode())[:16]
