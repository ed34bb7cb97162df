"""Is a Hugging Face hub id usable from here? Asked once, before any job, so that a typo'd local
path taken for a hub id, or a hub that cannot be reached, is a configuration error naming the key
in a second instead of a failed job after a minute of download retries.

Usable means: in the local hub cache (works offline), or the hub answers for it now (one request,
a short timeout, no retries). Nothing is downloaded here.
"""

from __future__ import annotations

from pathlib import Path

TIMEOUT_S = 10.0


def _cached(repo_id: str, repo_type: str, revision: str | None) -> bool:
    from huggingface_hub import (
        try_to_load_from_cache,  # lazy: Snakemake's main process imports this module
    )

    if repo_type != "model":
        return False
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision, repo_type=repo_type)
    return isinstance(found, str)


def repo_problem(
    repo_id: str, repo_type: str, revision: str | None, key: str, timeout: float = TIMEOUT_S
) -> str | None:
    """Why ``repo_id`` (a ``model`` or ``dataset``) cannot be used, naming config key ``key``;
    None when it can."""
    from huggingface_hub import (  # lazy: Snakemake's main process imports this module
        HfApi,
        constants,
    )
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if _cached(repo_id, repo_type, revision):
        return None
    taken = (
        f"config key '{key}': {repo_id!r} is not a path on this machine (nothing at "
        f"{Path(repo_id).absolute()}), so it is read as a Hugging Face hub {repo_type} id"
    )
    local = (
        "If you meant a local folder, create it, or write its path starting with ./ or / "
        "(a path so written is never taken for a hub id)."
    )
    if constants.HF_HUB_OFFLINE:
        return f"{taken}, which is not in the local hub cache, and HF_HUB_OFFLINE is set. {local}"
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=timeout)
    except GatedRepoError:
        return (
            f"{taken}, which is gated: accept its terms on the hub and log in "
            "(`hf auth login`, or set HF_TOKEN) before running."
        )
    except RevisionNotFoundError:
        return f"{taken}, which has no revision {revision!r} (model.revision)."
    except RepositoryNotFoundError:
        return (
            f"{taken}, and the hub has no {repo_type} of that name (or it is private: log in "
            f"with `hf auth login`). {local}"
        )
    except Exception as error:  # the HTTP client's connection errors, timeouts, proxies
        return (
            f"{taken}, and the hub could not be asked about it "
            f"({error.__class__.__name__}: {error}). {local} On a machine without network, "
            "download it beforehand (`hf download ...`) and give its local folder."
        )
    return None
