"""Snakemake adapter: the models of a models: configuration side by side (table and figures)."""

from spectra_attn.analysis.compare import RunOutputs, write_comparison


def main(snakemake) -> None:
    runs = [
        RunOutputs(run["run_name"], run["model"], verdict, atlas, summary)
        for run, verdict, atlas, summary in zip(
            snakemake.params.runs,
            snakemake.input.verdicts,
            snakemake.input.atlases,
            snakemake.input.head_summaries,
            strict=True,
        )
    ]
    names = ("table", "database", "verdicts", "atlas", "correlations")
    write_comparison(runs, {name: getattr(snakemake.output, name) for name in names})


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
