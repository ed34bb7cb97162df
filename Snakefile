# Spectra: attention measurements of decoder LLMs and a causal test of query magnitude.
# Stages: demo (offline model + corpus) → data (SlimPajama → 512-token shards) → capture → intervention and checks →
# aggregation, gain atlas, gain analysis, plots → report
# Run: snakemake --cores 1 --resources gpu=1   (see README.md)
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# One image for every job, used only with --software-deployment-method apptainer (on a SLURM
# cluster: docs/containers.md): spectra.sif in the working directory, built from spectra.def, or
# the image SPECTRA_CONTAINER names (a path or docker://...). Other runs do not read it, and their
# rerun records do not depend on it.
container: os.environ.get("SPECTRA_CONTAINER", "spectra.sif")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/data.smk"
include: "rules/capture.smk"
include: "rules/intervention.smk"
include: "rules/aggregate.smk"
include: "rules/analysis.smk"
include: "rules/compare.smk"


rule all:
    default_target: True
    input:
        final_outputs,
