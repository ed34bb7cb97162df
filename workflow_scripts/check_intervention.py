"""Snakemake adapter: one gate check of one head's intervention; fails the job if it fails."""

import torch

from spectra_attn.capture import CaptureSettings
from spectra_attn.checks import run_check
from spectra_attn.intervention import HeadSpec


def main(snakemake) -> None:
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    run_check(
        params.check,
        params.model,
        snakemake.input.manifest,
        HeadSpec(int(snakemake.wildcards.layer), int(snakemake.wildcards.head), params.role),
        params.scales,
        params.n_samples,
        CaptureSettings(**params.capture),
        snakemake.output.report,
        device=params.device,
        dtype=params.dtype,
        revision=params.revision,
        trust_remote_code=params.trust_remote_code,
    )


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
