"""Snakemake adapter: the query-scaling sweep of one head (all scales batched in one pass)."""

import torch

from spectra_attn.capture import CaptureSettings, ModelSpec
from spectra_attn.intervention import HeadSpec, run_head_sweep


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params, wildcards = snakemake.params, snakemake.wildcards
    run_head_sweep(
        ModelSpec(**params.model),
        snakemake.input.manifest,
        HeadSpec(int(wildcards.layer), int(wildcards.head), params.role),
        params.scales,
        params.n_samples,
        CaptureSettings(**params.capture),
        dict(snakemake.output.items()),
        batch_size=params.batch_size,
    )


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
