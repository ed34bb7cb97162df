"""Snakemake adapter: one gate check of one head's intervention; fails the job if it fails."""

import torch

from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.checks import run_check
from spectra_attn.model.intervention import HeadSpec
from spectra_attn.model.loading import ModelSpec


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    run_check(
        params.check,
        ModelSpec(**{**params.model, "name_or_path": params.model_path}),
        snakemake.input.manifest,
        HeadSpec(**params.head),
        params.scales,
        params.n_samples,
        CaptureSettings(**params.capture, query_block_size=snakemake.resources.query_block_size),
        snakemake.output.report,
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import claim_job_gpus, setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    claim_job_gpus(snakemake)  # noqa: F821
    main(snakemake)  # noqa: F821
