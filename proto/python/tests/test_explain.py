"""ExplainTask through the client: the spec, the refusal, no side effect."""

from __future__ import annotations

import json

import pytest

import berth_client
from berth_client import pb

from conftest import image, unique


def _spec(task: str, run_options: str = "") -> pb.TaskSpec:
    spec = pb.TaskSpec(job_id="pyexplain", task_id=task, command_line="echo hi")
    spec.container.image = image("busybox")
    spec.container.run_options = run_options
    return spec


def test_explain_gives_the_spec_and_runs_nothing(client: berth_client.Client) -> None:
    client.pull(image("busybox"))
    task = unique("explain")
    e = client.explain_spec(_spec(task, "--env FOO=bar"))
    assert e.image == image("busybox")
    assert not e.HasField("failure"), e.failure
    spec = json.loads(e.oci_spec_json)
    assert spec["process"]["args"] == ["echo", "hi"]
    assert "FOO=bar" in spec["process"]["env"]
    assert spec["process"]["user"]["uid"] == e.uid
    with pytest.raises(berth_client.NotFound):
        client.get_task("pyexplain", task)


def test_explain_refuses_what_run_task_refuses(client: berth_client.Client) -> None:
    spec = _spec(unique("bad"), "--no-such-flag")
    with pytest.raises(berth_client.InvalidArgument) as explained:
        client.explain_spec(spec)
    with pytest.raises(berth_client.InvalidArgument) as run:
        client.run_spec(spec)
    assert str(explained.value) == str(run.value)
    assert "--no-such-flag" in str(explained.value)
