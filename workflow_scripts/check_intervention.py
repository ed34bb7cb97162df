"""Snakemake adapter: one gate check of one head's intervention; fails the job if it fails."""

import torch

from spectra_attn.capture import CaptureSettings, ModelSpec
from spectra_attn.checks import run_check
from spectra_attn.intervention import HeadSpec


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params, wildcards = snakemake.params, snakemake.wildcards
    run_check(
        params.check,
        ModelSpec(**params.model),
        snakemake.input.manifest,
        HeadSpec(int(wildcards.layer), int(wildcards.head), params.role),
        params.scales,
        params.n_samples,
        CaptureSettings(**params.capture),
        snakemake.output.report,
    )


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
