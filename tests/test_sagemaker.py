"""SageMaker: Snakemake's rerun records kept in S3 (run_state), the training-job request
(sagemaker), and the demo through profiles/sagemaker against a local S3 server.

The unit tests use moto in process and botocore's Stubber (which checks a request against the
SageMaker API model); nothing here talks to AWS. The integration test starts moto_server, runs the
whole demo through ``spectra sagemaker run`` and then plays fresh containers against the bucket.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ParamValidationError
from botocore.stub import Stubber
from moto import mock_aws

from spectra_attn import cli
from spectra_attn.run.run_state import (
    STATE_KEY,
    RemoteState,
    StateConflict,
    pack_state,
    run_workflow,
    s3_client,
    split_s3_prefix,
    state_location,
    unpack_state,
)
from spectra_attn.run.sagemaker import launch, training_job_request

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "spectra-ci"
PREFIX = f"s3://{BUCKET}/spectra"


def record_name(key: str) -> str:
    """Snakemake's file name for a metadata record (persistence/file.py, short keys)."""
    return base64.urlsafe_b64encode(key.encode()).decode()


def write_state(snakemake_dir: Path, outputs: dict[str, dict], incomplete=()) -> None:
    """A .snakemake folder as Snakemake leaves it, with the folders that must not be synced."""
    for key, record in outputs.items():
        path = snakemake_dir / "metadata" / record_name(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    for key in incomplete:
        path = snakemake_dir / "incomplete" / record_name(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"external_jobid": None}))
    for scratch in ("storage/s3/bucket/big.bin", "locks/0.input.lock", "log/run.log"):
        (snakemake_dir / scratch).parent.mkdir(parents=True, exist_ok=True)
        (snakemake_dir / scratch).write_text("not state")


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def archive_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


@pytest.fixture
def s3(monkeypatch):
    """An in-process moto S3 with one bucket; no endpoint variable, fake credentials."""
    for name in list(os.environ):
        if name.startswith(("SNAKEMAKE_STORAGE_S3_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = s3_client({})
        client.create_bucket(Bucket=BUCKET)
        yield client


def stored_state(client) -> dict[str, bytes]:
    bucket, key = state_location(PREFIX)
    return archive_members(client.get_object(Bucket=bucket, Key=key)["Body"].read())


# --- locations and client --------------------------------------------------------------------


def test_state_lives_under_the_prefix():
    assert split_s3_prefix("s3://b/a/b/") == ("b", "a/b")
    assert state_location("s3://b/run/one") == ("b", f"run/one/{STATE_KEY}")
    assert state_location("s3://b") == ("b", STATE_KEY)
    for bad in ("b/path", "s3:///path", "gs://b/p"):
        with pytest.raises(ValueError):
            split_s3_prefix(bad)


def test_client_uses_the_storage_plugins_endpoint_variable():
    client = s3_client({"SNAKEMAKE_STORAGE_S3_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert s3_client({}).meta.endpoint_url.startswith("https://s3.")


# --- pull and push ---------------------------------------------------------------------------


def test_round_trip_restores_records_and_markers_only(s3, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    outputs = {
        f"{PREFIX}/results/demo/gain/verdict.json": {"rule": "gain", "params": ["[0.5]"]},
        f"{PREFIX}/results/demo/capture/part_0000.parquet": {"rule": "capture"},
    }
    write_state(first / ".snakemake", outputs, incomplete=[f"{PREFIX}/results/demo/x.csv"])
    marker = first / ".snakemake" / "incomplete" / record_name(f"{PREFIX}/results/demo/x.csv")
    os.utime(marker, (1_700_000_000, 1_700_000_000))  # Snakemake's record of the job start
    assert RemoteState(s3, PREFIX, first, sources=None).push()

    state = RemoteState(s3, PREFIX, second, sources=None)
    assert state.pull()
    restored = tree(second / ".snakemake")
    expected = {
        name: content
        for name, content in tree(first / ".snakemake").items()
        if name.startswith(("metadata/", "incomplete/"))
    }
    assert restored == expected and len(expected) == 3
    restored_marker = second / ".snakemake" / "incomplete" / marker.name
    assert restored_marker.stat().st_mtime == 1_700_000_000
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == [f"spectra/{STATE_KEY}"]


def test_missing_state_is_a_first_run(s3, tmp_path, caplog):
    caplog.set_level("INFO")
    state = RemoteState(s3, PREFIX, tmp_path, sources=None)
    assert not state.pull()
    assert "no Snakemake state" in caplog.text
    assert not (tmp_path / ".snakemake" / "metadata").exists()
    assert not state.push()  # e.g. a dry run: nothing to keep, no object made
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    write_state(tmp_path / ".snakemake", {"s3://x/y": {"rule": "r"}})
    assert state.push()  # creates the object
    assert f"metadata/{record_name('s3://x/y')}" in stored_state(s3)


def test_pull_replaces_local_records(s3, tmp_path):
    write_state(tmp_path / "a" / ".snakemake", {"s3://x/kept": {"rule": "r"}})
    RemoteState(s3, PREFIX, tmp_path / "a", sources=None).push()
    stale = tmp_path / "b" / ".snakemake"
    write_state(stale, {"s3://x/stale": {"rule": "old"}}, incomplete=["s3://x/stale"])
    RemoteState(s3, PREFIX, tmp_path / "b", sources=None).pull()
    assert sorted(tree(stale / "metadata")) == [record_name("s3://x/kept")]
    assert not list((stale / "incomplete").rglob("*"))
    assert (stale / "storage" / "s3" / "bucket" / "big.bin").is_file()  # not state: left alone


def test_push_skips_an_unchanged_state(s3, tmp_path):
    write_state(tmp_path / "a" / ".snakemake", {"s3://x/y": {"rule": "r"}})
    RemoteState(s3, PREFIX, tmp_path / "a", sources=None).push()
    bucket, key = state_location(PREFIX)
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    state = RemoteState(s3, PREFIX, tmp_path / "b", sources=None)
    state.pull()
    assert not state.push()  # e.g. after a dry run
    write_state(tmp_path / "b" / ".snakemake", {"s3://x/z": {"rule": "r"}})
    assert state.push()
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"] != etag


def test_a_second_writer_is_detected_not_overwritten(s3, tmp_path):
    RemoteState(s3, PREFIX, tmp_path / "seed", sources=None).push()
    one = RemoteState(s3, PREFIX, tmp_path / "one", sources=None)
    two = RemoteState(s3, PREFIX, tmp_path / "two", sources=None)
    one.pull(), two.pull()
    write_state(tmp_path / "one" / ".snakemake", {"s3://x/one": {"rule": "r"}})
    write_state(tmp_path / "two" / ".snakemake", {"s3://x/two": {"rule": "r"}})
    assert one.push()
    with pytest.raises(StateConflict, match="conflict-"):
        two.push()
    assert f"metadata/{record_name('s3://x/one')}" in stored_state(s3)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    (side,) = [k for k in keys if "conflict-" in k]
    content = archive_members(s3.get_object(Bucket=BUCKET, Key=side)["Body"].read())
    assert f"metadata/{record_name('s3://x/two')}" in content


def test_unchanged_sources_get_back_their_recorded_mtimes(tmp_path):
    """A rebuilt image has every file newer than the results; only edited files should be."""
    checkout = tmp_path / "checkout"
    files = {
        "workflow_scripts/capture.py": "print('capture')\n",
        "src/spectra_attn/model/metrics.py": "X = 1\n",
        "Snakefile": "rule all:\n",
        "README.md": "not a source\n",
    }
    for name, text in files.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(text)
        os.utime(checkout / name, (1_600_000_000, 1_600_000_000))
    data = pack_state(tmp_path / "empty", sources=checkout)
    manifest = json.loads(archive_members(data)["sources.json"])
    assert sorted(manifest) == [
        "Snakefile",
        "src/spectra_attn/model/metrics.py",
        "workflow_scripts/capture.py",
    ]

    for name, text in files.items():  # the new image: same files, fresh mtimes, one edited
        (checkout / name).write_text(text if "metrics" not in name else "X = 2\n")
    now = time.time()
    counts = unpack_state(data, tmp_path / "container" / ".snakemake", sources=checkout)
    assert counts["sources_restored"] == 2
    assert (checkout / "workflow_scripts/capture.py").stat().st_mtime == 1_600_000_000
    assert (checkout / "Snakefile").stat().st_mtime == 1_600_000_000
    assert (
        checkout / "src/spectra_attn/model/metrics.py"
    ).stat().st_mtime >= now - 5  # edited: new
    assert (checkout / "README.md").stat().st_mtime >= now - 5  # not recorded


# --- the wrapper ------------------------------------------------------------------------------

# A stand-in for snakemake: records one finished output and one started job, then exits.
FAKE_SNAKEMAKE = """
import base64, os, pathlib, signal, sys, time
state = pathlib.Path(sys.argv[1]) / ".snakemake"
def record(folder, key):
    path = state / folder / base64.urlsafe_b64encode(key.encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
mode = sys.argv[2]
record("metadata", "s3://spectra-ci/spectra/results/done.csv")
record("incomplete", "s3://spectra-ci/spectra/results/running.csv")
if mode == "fail":
    sys.exit(3)
if mode == "slow":
    time.sleep(1.5)
    record("metadata", "s3://spectra-ci/spectra/results/later.csv")
if mode == "term":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    (state / "ready").write_text("")
    time.sleep(60)
"""


def fake_snakemake(workdir: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", FAKE_SNAKEMAKE, str(workdir), mode]


def test_failed_run_still_pushes_its_records(s3, tmp_path):
    state = RemoteState(s3, PREFIX, tmp_path, sources=None)
    assert run_workflow(state, fake_snakemake(tmp_path, "fail"), push_every=0) == 3
    stored = stored_state(s3)
    assert f"metadata/{record_name(f'{PREFIX}/results/done.csv')}" in stored
    assert f"incomplete/{record_name(f'{PREFIX}/results/running.csv')}" in stored


def test_records_are_pushed_while_snakemake_runs(s3, tmp_path):
    pushed = []

    class Spy:
        def __getattr__(self, name):
            return getattr(s3, name)

        def put_object(self, **request):
            pushed.append(archive_members(request["Body"]))
            return s3.put_object(**request)

    state = RemoteState(Spy(), PREFIX, tmp_path, sources=None)
    assert run_workflow(state, fake_snakemake(tmp_path, "slow"), push_every=0.2) == 0
    done, later = (
        f"metadata/{record_name(f'{PREFIX}/results/{name}.csv')}" for name in ("done", "later")
    )
    assert any(done in p and later not in p for p in pushed[:-1])  # a push during the run
    assert done in pushed[-1] and later in pushed[-1]


def test_sigterm_reaches_snakemake_and_the_state_is_pushed(s3, tmp_path):
    state = RemoteState(s3, PREFIX, tmp_path, sources=None)
    before = signal.getsignal(signal.SIGTERM)

    def stop_when_ready():  # what SageMaker does at StopTrainingJob or MaxRuntimeInSeconds
        deadline = time.time() + 30
        while not (tmp_path / ".snakemake" / "ready").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_ready, daemon=True).start()
    started = time.time()
    assert run_workflow(state, fake_snakemake(tmp_path, "term"), push_every=0) == 143
    assert time.time() - started < 30
    assert f"incomplete/{record_name(f'{PREFIX}/results/running.csv')}" in stored_state(s3)
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_a_failed_final_push_fails_the_run(s3, tmp_path):
    class Broken:
        def __getattr__(self, name):
            return getattr(s3, name)

        def put_object(self, **request):
            raise ConnectionError("S3 unreachable")

    state = RemoteState(Broken(), PREFIX, tmp_path, sources=None)
    assert run_workflow(state, fake_snakemake(tmp_path, "ok"), push_every=0) == 1


def test_run_command_is_snakemake_with_the_profile_and_prefix(monkeypatch, tmp_path):
    seen = {}

    def fake_run(state, command, push_every):
        seen.update(state=state, command=command, push_every=push_every)
        return 7

    monkeypatch.setattr("spectra_attn.run.run_state.run_workflow", fake_run)
    argv = ["sagemaker", "run", "--prefix", PREFIX, "--directory", str(tmp_path), "--"]
    assert cli.main([*argv, "-n", "--configfile", "llama3.yaml"]) == 7
    assert seen["command"][1:] == [
        "-m",
        "snakemake",
        "--profile",
        "profiles/sagemaker",
        "--default-storage-prefix",
        PREFIX,
        "--directory",
        str(tmp_path),
        "-n",
        "--configfile",
        "llama3.yaml",
    ]
    assert seen["state"].snakemake_dir == tmp_path / ".snakemake" and seen["push_every"] == 300


# --- the training job -------------------------------------------------------------------------

IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/spectra:1"
ROLE = "arn:aws:iam::123456789012:role/SpectraSageMaker"
ARN = "arn:aws:sagemaker:eu-west-1:123456789012:training-job/spectra-20260101-000000"


def request(**overrides):
    arguments = dict(
        job_name="spectra-20260101-000000",
        image=IMAGE,
        role=ROLE,
        prefix=PREFIX + "/",
        snakemake_args=["--configfile", "llama3.yaml"],
        region="eu-west-1",
    )
    return training_job_request(**(arguments | overrides))


def test_training_job_runs_the_wrapper_on_a_gpu_instance():
    sent = request(checkpoint_s3_uri=f"s3://{BUCKET}/checkpoints", environment={"HF_TOKEN": "t"})
    algorithm = sent["AlgorithmSpecification"]
    assert algorithm["TrainingImage"] == IMAGE
    assert algorithm["ContainerEntrypoint"] == ["spectra", "sagemaker", "run"]
    assert algorithm["ContainerArguments"] == [
        "--prefix",
        PREFIX,
        "--",
        "--configfile",
        "llama3.yaml",
    ]
    assert sent["RoleArn"] == ROLE
    assert sent["ResourceConfig"] == {
        "InstanceType": "ml.g5.2xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 100,
    }
    assert sent["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert sent["Environment"] == {
        "PYTHONUNBUFFERED": "1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "SNAKEMAKE_STORAGE_S3_REGION": "eu-west-1",
        "HF_TOKEN": "t",
    }
    assert sent["OutputDataConfig"]["S3OutputPath"].startswith(PREFIX + "/")
    assert sent["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert "CheckpointConfig" not in request()


def test_the_containers_command_is_one_the_cli_accepts():
    algorithm = request()["AlgorithmSpecification"]
    argv = algorithm["ContainerEntrypoint"][1:] + algorithm["ContainerArguments"]
    args = cli.build_parser().parse_args(argv)
    assert args.handler is cli._sagemaker_run
    assert args.prefix == PREFIX and args.snakemake_args == ["--configfile", "llama3.yaml"]
    assert (args.directory, args.profile) == (".", "profiles/sagemaker")


def sagemaker_stub():
    client = boto3.client(
        "sagemaker",
        region_name="eu-west-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    return client, Stubber(client)


def test_launch_sends_a_request_the_api_model_accepts():
    client, stubber = sagemaker_stub()
    sent = request(checkpoint_s3_uri=f"s3://{BUCKET}/checkpoints")
    stubber.add_response("create_training_job", {"TrainingJobArn": ARN}, expected_params=sent)
    with stubber:
        assert launch(sent, client) == ARN
    stubber.assert_no_pending_responses()


def test_the_stub_rejects_a_request_the_api_would_reject():
    client, stubber = sagemaker_stub()
    broken = request()
    del broken["RoleArn"]
    broken["ResourceConfig"]["InstanceCount"] = "one"
    stubber.add_response("create_training_job", {"TrainingJobArn": ARN})
    with stubber, pytest.raises(ParamValidationError, match="RoleArn"):
        launch(broken, client)


def test_invalid_launch_settings_fail_before_sending():
    with pytest.raises(ValueError, match="S3 prefix"):
        request(prefix="my-bucket/spectra")
    with pytest.raises(ValueError, match="job name"):
        request(job_name="spectra_run")
    with pytest.raises(ValueError, match="environment"):
        request(environment={"BAD-NAME": "x"})
    with pytest.raises(ValueError, match="256"):
        request(snakemake_args=["--config", "x" * 300])


def test_cli_dry_run_prints_the_request_and_launch_sends_it(monkeypatch, capsys):
    argv = ["sagemaker", "launch", "--image", IMAGE, "--role", ROLE, "--prefix", PREFIX]
    argv += ["--job-name", "spectra-20260101-000000", "--region", "eu-west-1"]
    argv += ["--env", "HF_TOKEN=t", "--max-runtime-hours", "2"]
    assert cli.main([*argv, "--dry-run", "--", "--configfile", "llama3.yaml"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = request(environment={"HF_TOKEN": "t"}, max_runtime_s=7200)
    assert printed == expected

    client, stubber = sagemaker_stub()
    stubber.add_response("create_training_job", {"TrainingJobArn": ARN}, expected_params=expected)
    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: client)
    with stubber:
        assert cli.main([*argv, "--", "--configfile", "llama3.yaml"]) == 0
    assert capsys.readouterr().out.strip() == ARN


# --- the demo through the profile, against moto_server ---------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto_server on a free local port, one bucket; the environment that points at it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log_path, "w") as server_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SNAKEMAKE_STORAGE"))}
    env |= {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SNAKEMAKE_STORAGE_S3_ENDPOINT_URL": endpoint,
    }
    deadline = time.time() + 30
    while not accepts_connections(port):
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            server.wait()
            pytest.skip(f"moto_server did not start: {log_path.read_text()[-1000:]}")
        time.sleep(0.2)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=BUCKET)
    yield client, env
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


class Container:
    """A SageMaker container's view: the image (a copy of this checkout at a fixed path) and an
    empty working directory holding only config.yaml."""

    def __init__(self, root: Path, env: dict):
        self.image, self.work, self.env = root / "image", root / "work", env

    def build_image(self) -> None:
        """Copy the workflow (a snapshot: later edits of this checkout do not reach it)."""
        self.image.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        for name in ("Snakefile", "rules", "workflow_scripts", "src", "report", "envs", "profiles"):
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, self.image / name, ignore=ignore)
            else:
                shutil.copy2(source, self.image / name)

    def rebuild_image(self) -> None:
        """The same files built into a new image: every mtime is now, newer than the results."""
        now = time.time()
        for path in self.image.rglob("*"):
            os.utime(path, (now, now))

    def start(self, config: str | None = None) -> None:
        """A fresh container: no .snakemake, no local copies of storage objects."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir()
        (self.work / "config.yaml").write_text(config or (ROOT / "config.yaml").read_text())

    def _run(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=3000)

    def wrapper(self, *args: str) -> subprocess.CompletedProcess:
        """``spectra sagemaker run`` with this image's profile and Snakefile."""
        command = [sys.executable, "-m", "spectra_attn.cli", "sagemaker", "run"]
        command += ["--prefix", PREFIX, "--directory", str(self.work), "--sources", str(self.image)]
        command += ["--profile", str(self.image / "profiles" / "sagemaker"), "--"]
        return self._run([*command, "-s", str(self.image / "Snakefile"), *args])

    def snakemake(self, *args: str) -> subprocess.CompletedProcess:
        """The same Snakemake command without the wrapper: no records pulled."""
        command = [sys.executable, "-m", "snakemake", "-s", str(self.image / "Snakefile")]
        command += ["--profile", str(self.image / "profiles" / "sagemaker")]
        command += ["--default-storage-prefix", PREFIX, "--directory", str(self.work)]
        return self._run([*command, *args])


def planned_rules(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):", result.stdout, flags=re.MULTILINE))


def nothing_to_do(result: subprocess.CompletedProcess) -> bool:
    return "Nothing to be done" in result.stdout + result.stderr


def bucket_objects(client) -> dict[str, tuple]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {
        o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])
    }


@pytest.fixture(scope="module")
def s3_demo(s3_server, tmp_path_factory):
    client, env = s3_server
    container = Container(tmp_path_factory.mktemp("sagemaker"), env)
    container.build_image()
    container.start()
    started = time.time()
    result = container.wrapper()
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    print(f"\nfull demo through the wrapper: {time.time() - started:.0f} s")
    return client, container


@pytest.mark.integration
def test_demo_results_and_records_are_in_the_bucket(s3_demo):
    client, _ = s3_demo
    objects = bucket_objects(client)
    for name in ("results/demo/gain/verdict.json", "results/demo/aggregate/spectra.duckdb"):
        assert f"spectra/{name}" in objects
    verdict = client.get_object(Bucket=BUCKET, Key="spectra/results/demo/gain/verdict.json")
    assert "verdict" in json.loads(verdict["Body"].read())
    state = stored_state(client)
    records = [n for n in state if n.startswith("metadata/")]
    assert f"metadata/{record_name(f'{PREFIX}/results/demo/gain/verdict.json')}" in state
    assert not [n for n in state if n.startswith("incomplete/")]
    assert "workflow_scripts/capture.py" in json.loads(state["sources.json"])
    size = client.head_object(Bucket=BUCKET, Key=f"spectra/{STATE_KEY}")["ContentLength"]
    print(f"\n{len(objects)} objects in the bucket; state: {len(records)} records, {size} bytes")


@pytest.mark.integration
def test_a_fresh_container_schedules_nothing(s3_demo):
    client, container = s3_demo
    before = bucket_objects(client)
    container.start()
    again = container.wrapper()
    assert again.returncode == 0, again.stderr[-3000:]
    assert nothing_to_do(again), again.stdout[-3000:]
    assert bucket_objects(client) == before  # nothing rewritten, state not pushed again


@pytest.mark.integration
def test_a_changed_parameter_is_seen_through_the_pulled_records(s3_demo):
    _, container = s3_demo
    config = (ROOT / "config.yaml").read_text()
    changed = config.replace("scales: [0.5, 0.75, 1.0, 1.25, 1.5]", "scales: [0.5, 1.0, 2.0]")
    assert changed != config

    container.start(changed)  # control: without the records the change goes unnoticed
    unaware = container.snakemake("-n")
    assert unaware.returncode == 0, unaware.stderr[-3000:]
    assert nothing_to_do(unaware), unaware.stdout[-3000:]

    container.start(changed)
    planned = container.wrapper("-n")
    assert planned.returncode == 0, planned.stderr[-3000:]
    rules = planned_rules(planned)
    assert {"intervention_sweep", "check_temperature_identity", "gain", "plots"} <= rules
    assert not rules & {"make_shards", "capture", "build_demo_model", "build_demo_corpus"}


@pytest.mark.integration
def test_a_rebuilt_image_reruns_nothing_with_the_pulled_records(s3_demo):
    """A new image has every script newer than the results in S3."""
    _, container = s3_demo
    container.rebuild_image()
    container.start()  # control: without the records every script rule looks changed
    unaware = container.snakemake("-n")
    assert unaware.returncode == 0, unaware.stderr[-3000:]
    assert {"make_shards", "capture", "intervention_sweep"} <= planned_rules(unaware)

    container.start()
    again = container.wrapper("-n")
    assert again.returncode == 0, again.stderr[-3000:]
    assert nothing_to_do(again), again.stdout[-3000:]
