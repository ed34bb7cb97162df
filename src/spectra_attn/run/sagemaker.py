"""The workflow as a SageMaker training job: the CreateTrainingJob request, and sending it.

A training job rather than a processing job: it runs GPU instances such as ml.g5.2xlarge for up
to 28 days (processing jobs: 9), and takes an optional checkpoint folder. The container runs
``spectra sagemaker run`` (see ``run_state``) from the image's working directory, a checkout of
this repository with the package and snakemake-storage-plugin-s3 installed, so every input and
output, and Snakemake's rerun records, live under the S3 prefix. The request is built by a pure
function so that it can be printed (``--dry-run``) and tested without AWS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from spectra_attn.run.run_state import split_s3_prefix

WRAPPER = ("spectra", "sagemaker", "run")
CHECKPOINT_DIR = "/opt/ml/checkpoints"
JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
ENV_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def default_job_name(now: datetime, base: str = "spectra") -> str:
    """``spectra-20260128-013059``: unique per second, within SageMaker's 63 characters."""
    return f"{base}-{now:%Y%m%d-%H%M%S}"


def training_job_request(
    *,
    job_name: str,
    image: str,
    role: str,
    prefix: str,
    snakemake_args: Sequence[str] = (),
    instance_type: str = "ml.g5.2xlarge",
    volume_gb: int = 100,
    max_runtime_s: int = 24 * 3600,
    checkpoint_s3_uri: str | None = None,
    environment: Mapping[str, str] | None = None,
    region: str | None = None,
) -> dict:
    """Keyword arguments of ``sagemaker.create_training_job`` for one run of the workflow.

    The container's command is the state wrapper with the prefix and the Snakemake arguments;
    the environment names the region for both boto3 and the storage plugin (whose own default
    is us-east-1) and keeps Python's output unbuffered for CloudWatch. ``environment`` is added
    last, so it can override both.
    """
    split_s3_prefix(prefix)  # raises ValueError on anything but s3://bucket/...
    prefix = prefix.rstrip("/")
    if not JOB_NAME.fullmatch(job_name):
        raise ValueError(f"invalid SageMaker job name {job_name!r} (letters, digits, '-'; ≤63)")
    arguments = ["--prefix", prefix, "--", *snakemake_args]
    if len(arguments) > 100 or any(len(a) > 256 for a in arguments):
        raise ValueError("SageMaker takes at most 100 container arguments of 256 characters")
    env = {"PYTHONUNBUFFERED": "1"}
    if region:
        env |= {"AWS_DEFAULT_REGION": region, "SNAKEMAKE_STORAGE_S3_REGION": region}
    env |= dict(environment or {})
    bad = [name for name in env if not ENV_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"invalid environment variable names: {bad}")
    request = {
        "TrainingJobName": job_name,
        "RoleArn": role,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": list(WRAPPER),
            "ContainerArguments": arguments,
        },
        # Required by the API; the workflow writes nothing to /opt/ml/model.
        "OutputDataConfig": {"S3OutputPath": f"{prefix}/.sagemaker-output"},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": volume_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
        "Environment": env,
    }
    if checkpoint_s3_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_s3_uri, "LocalPath": CHECKPOINT_DIR}
    return request


def launch(request: Mapping, client=None, region: str | None = None) -> str:
    """Send the request; returns the training job's ARN."""
    if client is None:
        import boto3  # lazy: only launching needs it, and it takes a second to import

        client = boto3.client("sagemaker", region_name=region)
    return client.create_training_job(**request)["TrainingJobArn"]
