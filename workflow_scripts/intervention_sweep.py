"""Snakemake adapter: the query-scaling sweep of one head (all scales batched in one pass)."""

import torch

from spectra_attn.capture import CaptureSettings
from spectra_attn.intervention import HeadSpec, run_head_sweep


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    run_head_sweep(
        params.model,
        snakemake.input.manifest,
        HeadSpec(int(snakemake.wildcards.layer), int(snakemake.wildcards.head), params.role),
        params.scales,
        params.n_samples,
        CaptureSettings(**params.capture),
        dict(snakemake.output.items()),
        batch_size=params.batch_size,
        device=params.device,
        dtype=params.dtype,
        revision=params.revision,
        trust_remote_code=params.trust_remote_code,
    )


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
