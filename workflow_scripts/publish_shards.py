"""Snakemake adapter: the shards in use, linked into results/<run>/data/."""

from spectra_attn.data.shards import publish


def main(snakemake) -> None:
    publish(snakemake.input.manifest, snakemake.output.shards, snakemake.output.manifest)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
