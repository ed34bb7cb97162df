"""The provenance of a job that runs the model: the model's identity (the sha256 of a local
folder's weights, or a hub id's resolved revision), the versions of torch and transformers and the
device, beside what :mod:`spectra_attn.provenance` records for every output. Apart from it
because it needs transformers and torch, which only the model jobs' environment has."""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from spectra_attn.io import sha256_file_remembered
from spectra_attn.model.loading import resolve_device
from spectra_attn.provenance import combined_sha256, corpus_identity

logger = logging.getLogger(__name__)


def model_identity(
    name_or_path: str | Path, revision: str | None = None, trust_remote_code: bool = False
) -> dict[str, Any]:
    """A local folder: the sha256 of each of its ``*.safetensors`` files (and of config.json),
    and one ``id`` over them. A hub id: the id, the requested revision and the commit it resolved
    to (from the local cache or the hub, as transformers resolves it); ``id`` is ``hub@commit``."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) + sorted(path.glob("config.json"))
        hashes = {f.name: sha256_file_remembered(f) for f in files}
        return {
            "source": "local",
            "path": str(path),
            "files": hashes,
            "id": combined_sha256(hashes),
        }
    resolved = None
    try:
        from transformers import AutoConfig

        resolved = getattr(
            AutoConfig.from_pretrained(
                str(name_or_path), revision=revision, trust_remote_code=trust_remote_code
            ),
            "_commit_hash",
            None,
        )
    except Exception as error:  # noqa: BLE001 — provenance must not fail a job; say why instead
        logger.warning("could not resolve the revision of %s: %s", name_or_path, error)
    return {
        "source": "hub",
        "hub_id": str(name_or_path),
        "revision": revision,
        "resolved_revision": resolved,
        "id": f"{name_or_path}@{resolved or revision or 'unresolved'}",
    }


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def runtime(device: Any = None) -> dict[str, Any]:
    """Python, torch and transformers versions and, if given, the device a job ran on (with the
    GPU's name for CUDA)."""
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
    }
    if device is not None:
        name = str(device)
        if name.startswith("cuda"):
            import torch

            name = f"{name} ({torch.cuda.get_device_name(device)})"
        elif name == "cpu":
            name = f"cpu ({platform.machine()})"
        result["device"] = name
    return result


def collect(
    run: Mapping[str, Any] | None,
    *,
    model: str | Path | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    manifest: str | Path | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """One job's provenance: ``run`` (:func:`run_identity`, from the workflow), the model's and
    corpus's identities where the job has them, and the runtime."""
    record: dict[str, Any] = dict(run or {})
    if model is not None:
        record["model"] = model_identity(model, revision, trust_remote_code)
    if manifest is not None:
        record["corpus"] = corpus_identity(manifest)
    record["runtime"] = runtime(device)
    return record


def collect_for_job(run: Mapping[str, Any] | None, spec: Any, manifest: str | Path) -> dict:
    """:func:`collect` for a model job: the model a ``loading.ModelSpec`` names, the shards'
    manifest and the device the spec resolves to (with how many GPUs a device map spreads the
    model over)."""
    device = resolve_device(spec.device)
    record = collect(
        run,
        model=spec.name_or_path,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        manifest=manifest,
        device=device,
    )
    device_map = getattr(spec, "device_map", None)
    if device_map is not None and device.type == "cuda":
        import torch

        how = device_map if isinstance(device_map, str) else "explicit"
        record["runtime"]["device"] += f" × {torch.cuda.device_count()}, device_map {how}"
    return record
