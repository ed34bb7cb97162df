"""Snakemake adapter: per-sample gain metrics of every head at every scale, for one sample range."""

import torch

from spectra_attn.model.atlas import run_atlas
from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.loading import ModelSpec


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    start, stop = params.sample_range
    run_atlas(
        ModelSpec(**{**params.model, "name_or_path": params.model_path}),
        snakemake.input.manifest,
        snakemake.output.part,
        sample_start=start,
        sample_stop=stop,
        settings=CaptureSettings(
            **params.capture, query_block_size=snakemake.resources.query_block_size
        ),
        scales=params.scales,
        batch_size=snakemake.resources.batch_size,
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import claim_job_gpus, setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    claim_job_gpus(snakemake)  # noqa: F821
    main(snakemake)  # noqa: F821
