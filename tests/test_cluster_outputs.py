"""The stack's outputs file (experiments/spotsearch/cluster/outputs.py): read, checked, kept private."""

from __future__ import annotations

import json

import pytest

from .experiment_runs import (
    assert_one_line_error,
    run_experiment,
)


def test_no_outputs_file_says_where_it_looked_and_that_a_deployed_stack_needs_no_redeploy(tmp_path):
    run = run_experiment("--stack", "dask", cwd=tmp_path)
    assert_one_line_error(
        run,
        f"outputs.json: not found (looked for {tmp_path / 'outputs.json'}); if stack 'dask' is deployed, pass "
        "--outputs with the file `cdktf deploy` wrote (outputs.json in the project's folder), else deploy it: "
        "`cdktf deploy dask --outputs-file outputs.json",
    )


def test_unknown_stack(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    run = run_experiment("--stack", "big", "--outputs", str(outputs), cwd=tmp_path)
    assert_one_line_error(run, "no stack named 'big' (stacks found: loopback)")


def test_outputs_file_missing_a_key(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    del document["loopback"]["tls_client_key_pem"]
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), cwd=tmp_path)
    assert_one_line_error(
        run,
        "has no output 'tls_client_key_pem'; redeploy with `cdktf deploy loopback --outputs-file outputs.json --outputs-file-include-sensitive-outputs` (sensitive outputs need",
    )


def test_outputs_readable_by_others_are_made_private_with_one_line(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    state = tmp_path / "terraform.loopback.tfstate"
    state.write_text("{}")
    for path in (outputs, state):
        path.chmod(0o644)
    run = run_experiment("--stack", "big", "--outputs", str(outputs), cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines()[0] == (
        f"warning: {outputs} holds the cluster's TLS keys and others could read it (mode 0644); made it 0600"
    )
    assert outputs.stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o644, "only the named stack's state is touched"
    run = run_experiment(
        "--stack", "loopback", "--outputs", str(outputs), "--timeout", "1", "--workers", "9", cwd=tmp_path
    )
    assert f"warning: {state} holds the cluster's TLS keys" in run.stderr
    assert state.stat().st_mode & 0o777 == 0o600


def test_only_a_regular_file_of_ours_is_ever_made_private(tmp_path):
    """Checked before anything changes: a folder, or a file of another user's, keeps its mode."""
    import os

    from spotsearch.cluster.messages import ClusterError
    from spotsearch.cluster.outputs import keep_private

    folder = tmp_path / "project"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    theirs = tmp_path / "README.md"
    theirs.write_text("# not ours")
    theirs.chmod(0o644)
    os.chown(theirs, 4321, -1)  # this suite runs as root: any owner can be given
    for path, expected in ((folder, "not a file"), (theirs, "and it is not yours; ask its owner")):
        before = path.stat().st_mode & 0o777
        with pytest.raises(ClusterError, match=expected):
            keep_private(path)
        assert path.stat().st_mode & 0o777 == before, path
    ours = tmp_path / "outputs.json"
    ours.write_text("{}")
    ours.chmod(0o750)
    keep_private(ours)
    assert ours.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("text", "said"),
    [("# my notes\n", "not valid JSON"), ('["a", "list"]', "no stack named 'dask' (stacks found: none)"),
     ('{"dask": "not outputs"}', "stack 'dask' must be an object of outputs")],
    ids=["not JSON", "not stacks", "not outputs"],
)  # fmt: skip
def test_a_file_that_is_not_an_outputs_file_keeps_its_mode(tmp_path, text, said):
    """Only a file found to be an outputs file is made private; the control is the test above."""
    notes = tmp_path / "notes.md"
    notes.write_text(text)
    notes.chmod(0o644)
    run = run_experiment("--stack", "dask", "--outputs", str(notes), cwd=tmp_path)
    assert_one_line_error(run, said)
    assert notes.stat().st_mode & 0o777 == 0o644


def test_outputs_given_as_a_folder_is_one_line_and_changes_nothing(tmp_path):
    folder = tmp_path / "deploys"
    folder.mkdir()
    folder.chmod(0o755)
    run = run_experiment("--stack", "dask", "--outputs", str(folder), cwd=tmp_path)
    assert_one_line_error(run, f"{folder}: not a file")
    assert folder.stat().st_mode & 0o777 == 0o755
