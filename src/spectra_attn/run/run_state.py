"""Snakemake's rerun records kept in S3 beside the results, for containers that start empty.

With S3 as default storage the results outlive a SageMaker container, but what Snakemake decides
reruns from does not: ``.snakemake/metadata`` (per output: the params, code, input set and input
checksums it was made with), ``.snakemake/incomplete`` (outputs of jobs that started and did not
finish) and the mtimes of the workflow's scripts (a script newer than its outputs reruns them). A
fresh container has none of them, so every output in S3 looks up to date and a changed parameter
goes unnoticed; a freshly built image, whose files are all newer than the results, reruns every
script rule.

``RemoteState`` keeps all of it as one object, ``<prefix>/.snakemake-state/state.tar.gz``:
``metadata/``, ``incomplete/`` (and ``metadata.db`` under ``--persistence-backend db``) plus
``sources.json``, the SHA-256 and mtime of every workflow source file. One object because a
single PUT replaces it at once (a reader gets the old state or the new one, never a mix, and
deleted incomplete markers go with it), one GET restores it, and it is a few hundred small files
that would otherwise be as many requests. Pushes are conditional on the ETag seen at the pull, so
a second run writing the same prefix is detected instead of silently overwritten.

``run_workflow`` is the wrapper: pull, run Snakemake, push every few minutes while it runs and
once more when it exits (also when it failed or was stopped with SIGTERM, so the records of the
jobs that did finish are kept).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from spectra_attn.io import sha256_file

log = logging.getLogger("spectra.run_state")

STATE_KEY = ".snakemake-state/state.tar.gz"
# What Snakemake's file persistence keeps in .snakemake (and the db backend's default database).
STATE_ENTRIES = ("metadata", "incomplete", "metadata.db")
SOURCES_MEMBER = "sources.json"
# The workflow files whose mtimes are rerun triggers: scripts (always compared with their
# outputs' mtimes) and the package modules rules declare as local() inputs.
WORKFLOW_SOURCES = ("Snakefile", "rules", "workflow_scripts", "src")


class StateConflict(RuntimeError):
    """Another run replaced the prefix's state after this one pulled it."""


def split_s3_prefix(prefix: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → ``("bucket", "a/b")``."""
    if not prefix.startswith("s3://"):
        raise ValueError(f"not an S3 prefix (s3://bucket/path): {prefix!r}")
    bucket, _, path = prefix[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in S3 prefix {prefix!r}")
    return bucket, path.strip("/")


def state_location(prefix: str) -> tuple[str, str]:
    """Bucket and key of a prefix's state object."""
    bucket, path = split_s3_prefix(prefix)
    return bucket, f"{path}/{STATE_KEY}" if path else STATE_KEY


def s3_client(environ: Mapping[str, str] = os.environ):
    """A boto3 S3 client configured like the storage plugin, from the plugin's own variables
    (SNAKEMAKE_STORAGE_S3_ENDPOINT_URL, _REGION, _ACCESS_KEY, _SECRET_KEY, _TOKEN) when set, else
    boto3's defaults (on SageMaker: the instance role), so that one set of variables points the
    outputs and this state at the same place."""
    import boto3  # lazy: only SageMaker runs need it, and it takes a second to import
    from botocore.config import Config

    def setting(name: str) -> str | None:
        return environ.get(f"SNAKEMAKE_STORAGE_S3_{name}") or None

    return boto3.client(
        "s3",
        endpoint_url=setting("ENDPOINT_URL"),
        region_name=setting("REGION"),
        aws_access_key_id=setting("ACCESS_KEY"),
        aws_secret_access_key=setting("SECRET_KEY"),
        aws_session_token=setting("TOKEN"),
        # As the plugin does: checksums only where required, which S3-compatible stores accept.
        config=Config(
            request_checksum_calculation="when_required",
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


def _files(root: Path, entries: Sequence[str]) -> list[Path]:
    """Regular files under ``root/entry`` for each entry (a file or a directory), sorted."""
    found = []
    for entry in entries:
        path = root / entry
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += [
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
            ]
    return sorted(found)


def state_fingerprint(snakemake_dir: str | Path) -> str:
    """SHA-256 over the names and contents of the state files: equal when nothing changed."""
    snakemake_dir = Path(snakemake_dir)
    digest = hashlib.sha256()
    for path in _files(snakemake_dir, STATE_ENTRIES):
        try:
            content = sha256_file(path)
        except FileNotFoundError:  # an incomplete marker removed meanwhile: a job finished
            continue
        digest.update(path.relative_to(snakemake_dir).as_posix().encode() + b"\0")
        digest.update(content.encode())
    return digest.hexdigest()


def source_manifest(root: str | Path) -> dict[str, dict]:
    """``{relative path: {"sha256", "mtime"}}`` of the workflow source files under ``root``."""
    root = Path(root)
    return {
        path.relative_to(root).as_posix(): {
            "sha256": sha256_file(path),
            "mtime": path.stat().st_mtime,
        }
        for path in _files(root, WORKFLOW_SOURCES)
    }


def restore_source_mtimes(root: str | Path, manifest: Mapping[str, Mapping]) -> int:
    """Give each source file whose content is the recorded one its recorded mtime (if older).

    A checkout or image made after the results has every file newer than them, which Snakemake
    reads as "script changed". Unchanged content gets the mtime it had when it last ran; changed
    files keep their new mtime, so exactly their jobs rerun. Returns how many files were set.
    """
    root = Path(root)
    restored = 0
    for relative, recorded in manifest.items():
        path = root / relative
        if not path.is_file():
            continue
        stat = path.stat()
        if recorded["mtime"] < stat.st_mtime and sha256_file(path) == recorded["sha256"]:
            os.utime(path, (stat.st_atime, recorded["mtime"]))
            restored += 1
    return restored


def pack_state(snakemake_dir: str | Path, sources: str | Path | None = None) -> bytes:
    """The state files of ``snakemake_dir`` (and the manifest of ``sources``) as a tar.gz."""
    snakemake_dir = Path(snakemake_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in _files(snakemake_dir, STATE_ENTRIES):
            try:  # Snakemake may be running (periodic pushes)
                archive.add(path, arcname=path.relative_to(snakemake_dir).as_posix())
            except FileNotFoundError:
                continue
        if sources is not None:
            manifest = json.dumps(source_manifest(sources), indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(SOURCES_MEMBER)
            info.size, info.mtime = len(manifest), int(time.time())
            archive.addfile(info, io.BytesIO(manifest))
    return buffer.getvalue()


def unpack_state(
    data: bytes, snakemake_dir: str | Path, sources: str | Path | None = None
) -> dict[str, int]:
    """Replace the state files of ``snakemake_dir`` with the archive's (mtimes kept: Snakemake
    reads a job's start time from its incomplete marker's mtime) and restore source mtimes.
    Returns counts of what was restored."""
    snakemake_dir = Path(snakemake_dir)
    snakemake_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=snakemake_dir, prefix=".state-") as staging:
        staging = Path(staging)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            archive.extractall(staging, filter="data")
        for entry in STATE_ENTRIES:
            target = snakemake_dir / entry
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if (staging / entry).exists():
                os.replace(staging / entry, target)
        counts = {
            entry: len(_files(snakemake_dir, [entry])) for entry in ("metadata", "incomplete")
        }
        manifest_path = staging / SOURCES_MEMBER
        if sources is not None and manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            counts["sources_restored"] = restore_source_mtimes(sources, manifest)
    return counts


def _error_code(error: Exception) -> str:
    return getattr(error, "response", {}).get("Error", {}).get("Code", "")


class RemoteState:
    """The Snakemake state of one working directory, kept at one S3 prefix.

    ``directory`` is Snakemake's working directory (its state is ``directory/.snakemake``);
    ``sources`` the workflow checkout whose source mtimes are recorded and restored (None: not).
    """

    def __init__(
        self,
        client,
        prefix: str,
        directory: str | Path = ".",
        sources: str | Path | None = ".",
    ):
        self.client = client
        self.prefix = prefix
        self.bucket, self.key = state_location(prefix)
        self.snakemake_dir = Path(directory) / ".snakemake"
        self.sources = sources
        # None: no state object existed at the pull (a push must then create it, not replace).
        self.etag: str | None = None
        self.fingerprint: str | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def pull(self) -> bool:
        """Restore the prefix's state into the working directory; False when there is none yet
        (a first run), which is fine."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as error:
            if _error_code(error) not in ("NoSuchKey", "404"):
                raise
            log.info("no Snakemake state at %s yet: starting without records", self.url)
            # An empty state's fingerprint: a dry run on a new prefix leaves nothing behind.
            self.etag, self.fingerprint = None, hashlib.sha256().hexdigest()
            return False
        counts = unpack_state(response["Body"].read(), self.snakemake_dir, self.sources)
        self.etag, self.fingerprint = response["ETag"], state_fingerprint(self.snakemake_dir)
        log.info("pulled Snakemake state from %s: %s", self.url, counts)
        return True

    def push(self) -> bool:
        """Upload the working directory's state if it changed since the last pull or push.

        The PUT is conditional (If-Match the ETag this run last saw, If-None-Match when there
        was none): if another run replaced the object meanwhile, this run's state goes to a
        side object instead and ``StateConflict`` is raised. Returns whether it uploaded.
        """
        from botocore.exceptions import ClientError

        with self._lock:
            fingerprint = state_fingerprint(self.snakemake_dir)
            if fingerprint == self.fingerprint:
                return False
            body = pack_state(self.snakemake_dir, self.sources)
            condition = {"IfMatch": self.etag} if self.etag else {"IfNoneMatch": "*"}
            try:
                response = self.client.put_object(
                    Bucket=self.bucket, Key=self.key, Body=body, **condition
                )
            except ClientError as error:
                if _error_code(error) not in ("PreconditionFailed", "412"):
                    raise
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                side = self.key.replace(".tar.gz", f".conflict-{stamp}.tar.gz")
                self.client.put_object(Bucket=self.bucket, Key=side, Body=body)
                raise StateConflict(
                    f"another run replaced {self.url} after this one pulled it; this run's "
                    f"state was saved to s3://{self.bucket}/{side} instead: run one workflow "
                    "per prefix at a time"
                ) from None
            self.etag, self.fingerprint = response["ETag"], fingerprint
            log.info("pushed Snakemake state to %s (%d bytes)", self.url, len(body))
            return True


def snakemake_command(
    prefix: str, directory: str | Path, profile: str | Path, snakemake_args: Sequence[str]
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(profile),
        "--default-storage-prefix",
        prefix,
        "--directory",
        str(directory),
        *snakemake_args,
    ]


def run_workflow(
    state: RemoteState,
    command: Sequence[str],
    push_every: float = 300.0,
) -> int:
    """Pull ``state``, run ``command`` (Snakemake), push the state every ``push_every`` seconds
    while it runs (0: never) and when it exits, whatever its exit status. Returns the command's
    exit status, or 1 if it succeeded but the final push failed.

    SIGTERM (what SageMaker sends when a job is stopped or reaches its maximum runtime, 120 s
    before SIGKILL) is passed on to Snakemake, which stops its jobs; the push follows.
    """
    state.pull()
    log.info("running %s", " ".join(command))
    process = subprocess.Popen(list(command))
    restore = {}
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C in a terminal reaches Snakemake directly (same process group): wait for it.
        restore[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        restore[signal.SIGTERM] = signal.signal(
            signal.SIGTERM, lambda signum, frame: process.send_signal(signum)
        )
    stop = threading.Event()

    def push_periodically():
        while not stop.wait(push_every):
            try:
                state.push()
            except Exception as error:  # the run goes on; the final push reports for real
                log.warning("periodic push of the Snakemake state failed: %s", error)

    pusher = threading.Thread(target=push_periodically, daemon=True)
    if push_every > 0:
        pusher.start()
    try:
        returncode = process.wait()
    finally:
        stop.set()
        for signum, handler in restore.items():
            signal.signal(signum, handler)
    if pusher.is_alive():
        pusher.join()
    log.info("snakemake exited with status %d", returncode)
    try:
        state.push()
    except Exception as error:
        log.error("could not push the Snakemake state: %s", error)
        return returncode or 1
    return returncode
