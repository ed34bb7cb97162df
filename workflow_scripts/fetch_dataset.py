"""Snakemake adapter: download one split of a hub dataset in full into resources/datasets/."""

from spectra_attn.data.corpus import download_hub_dataset


def main(snakemake) -> None:
    download_hub_dataset(
        snakemake.params.dataset_id, snakemake.params.split, snakemake.output.dataset_dir
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
