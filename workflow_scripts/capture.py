"""Snakemake adapter: per-token attention metrics of one range of samples → one Parquet part."""

import torch

from spectra_attn import provenance
from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.capture import run_capture
from spectra_attn.model.loading import ModelSpec
from spectra_attn.run import model_provenance


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    start, stop = params.sample_range
    spec = ModelSpec(**{**params.model, "name_or_path": params.model_path})
    record = model_provenance.collect_for_job(params.provenance, spec, snakemake.input.manifest)
    run_capture(
        spec,
        snakemake.input.manifest,
        snakemake.output.part,
        sample_start=start,
        sample_stop=stop,
        settings=CaptureSettings(
            **params.capture, query_block_size=snakemake.resources.query_block_size
        ),
        batch_size=snakemake.resources.batch_size,
        metadata=provenance.parquet_metadata(record),
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import claim_job_gpus, setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    claim_job_gpus(snakemake)  # noqa: F821
    main(snakemake)  # noqa: F821
