"""Snakemake adapter: the query-scaling sweep of one head (all scales batched in one pass)."""

import torch

from spectra_attn import provenance
from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.intervention import HeadSpec, run_head_sweep
from spectra_attn.model.loading import ModelSpec
from spectra_attn.run import model_provenance


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params, resources = snakemake.params, snakemake.resources
    spec = ModelSpec(**{**params.model, "name_or_path": params.model_path})
    record = model_provenance.collect_for_job(params.provenance, spec, snakemake.input.manifest)
    run_head_sweep(
        spec,
        snakemake.input.manifest,
        HeadSpec(**params.head),
        params.scales,
        params.n_samples,
        CaptureSettings(**params.capture, query_block_size=resources.query_block_size),
        dict(snakemake.output.items()),
        batch_size=resources.batch_size,
        metadata=provenance.parquet_metadata(record),
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import claim_job_gpus, setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    claim_job_gpus(snakemake)  # noqa: F821
    main(snakemake)  # noqa: F821
