"""`branchflow.azureml.plan`: reuse or rerun per node, and why, from node states alone."""

from __future__ import annotations

import dataclasses

from branchflow.azureml.plan import NodeState, plan, recorded, tags

UPSTREAM = {"frames": (), "features": ("frames",), "train": ("features",), "eval": ("train",)}


def states(**changes: dict[str, object]) -> dict[str, NodeState]:
    base = NodeState("s", "c", "w", "env:1", "cpu", deterministic=True)
    return {
        node: dataclasses.replace(base, **changes.get(node, {}))  # type: ignore[arg-type]
        for node in UPSTREAM
    }


def lines(now: dict[str, NodeState], last: dict[str, NodeState] | None) -> list[str]:
    return [verdict.line() for verdict in plan(now, UPSTREAM, last)]


def test_an_unchanged_tree_reuses_every_node() -> None:
    assert lines(states(), states()) == [f"reuse  {node}: unchanged" for node in UPSTREAM]


def test_a_changed_node_reruns_with_what_changed_and_its_downstream_follows() -> None:
    now = states(train={"stage": "s2", "code": "c2"})
    assert lines(now, states()) == [
        "reuse  frames: unchanged",
        "reuse  features: unchanged",
        "rerun  train: its DVC stage changed (cmd, params, deps or data); its code changed",
        "rerun  eval: upstream train reruns",
    ]


def test_each_part_is_named_as_the_reason() -> None:
    reasons = {
        "wrapper": "the stage wrapper changed (a branchflow upgrade)",
        "environment": "its environment changed (the lock or the base image)",
        "settings": "its run settings changed (compute, nodes, processes, timeout, variables)",
    }
    for part, reason in reasons.items():
        now = states(frames={part: "other"})
        assert lines(now, states())[0] == f"rerun  frames: {reason}"
        assert lines(now, states())[1] == "rerun  features: upstream frames reruns"


def test_without_a_past_run_or_for_new_and_nondeterministic_nodes_everything_reruns() -> None:
    assert set(lines(states(), None)) == {
        f"rerun  {node}: no completed run of this branch's pipeline to reuse" for node in UPSTREAM
    }
    last = states()
    del last["eval"]
    assert lines(states(), last)[-1] == "rerun  eval: a new node"
    now = states(frames={"deterministic": False})
    assert (
        lines(now, states())[0] == "rerun  frames: not deterministic (always_changed in dvc.yaml)"
    )


def test_the_tags_submit_writes_read_back_and_foreign_tags_are_ignored() -> None:
    now = states(train={"deterministic": False})
    written = tags(now)
    assert written["branchflow.plan"] == "1"
    assert recorded({**written, "branch": "main", "branchflow.node.x": "stage=1"}) == now
