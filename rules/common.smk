# Helpers shared by rules/*.smk (config validation, output paths, input functions). No logic lives
# here beyond choosing paths; the work is in the spectra_attn package (installed by `make setup`,
# or by envs/*.post-deploy.sh inside a conda env).
from pathlib import Path

from snakemake.exceptions import WorkflowError

from spectra_attn import config as spectra_config
from spectra_attn.corpus import hub_cache_dir, is_hub_id
from spectra_attn.samples import sample_ranges

# The package's validator (same schema as `spectra config show`) fills defaults and names every
# unknown or invalid key at once, before any job is scheduled.
try:
    config.update(spectra_config.validate(config))
except spectra_config.ConfigError as error:
    raise WorkflowError(str(error)) from None

RUN = f"results/{config['run_name']}"
LOGS = f"{RUN}/logs"
BENCHMARKS = f"{RUN}/benchmarks"
PACKAGE = Path(workflow.basedir) / "src" / "spectra_attn"
HUB_DATASET_DIR = str(hub_cache_dir(config["data"]["source"], config["data"]["split"]))


def package_code(*modules):
    """Package modules that a job runs, declared as its inputs so that editing them reruns it
    (Snakemake tracks only the script itself)."""
    return [str(PACKAGE / f"{module}.py") for module in ("__init__", *modules)]


def model_inputs():
    """The demo model folder when config names it; nothing for a hub id or a user's folder."""
    if spectra_config.uses_demo_model(config):
        return rules.build_demo_model.output.model_dir
    return []


def corpus_inputs():
    """What the data stage reads: the demo corpus, a hub download, or nothing (a local folder)."""
    if spectra_config.uses_demo_corpus(config):
        return rules.build_demo_corpus.output.corpus_dir
    if is_hub_id(config["data"]["source"]):
        return rules.fetch_dataset.output.dataset_dir
    return []


def corpus_dir(wildcards, input):
    """The local directory the data stage reads: its corpus input (demo corpus or hub download)
    when it has one, else data.source itself."""
    return input.corpus or config["data"]["source"]


def model_path(wildcards, input):
    """The model folder or hub id: the built demo model when it is an input, else the config's."""
    return input.model or config["model"]["name_or_path"]


CAPTURE_RANGES = sample_ranges(
    config["capture"]["n_samples"], config["capture"]["samples_per_job"]
)


def capture_parts():
    """One Parquet part per range of capture.samples_per_job samples."""
    return [
        f"{RUN}/capture/part_{index:04d}.parquet"
        for index in range(len(CAPTURE_RANGES))
    ]


def capture_sample_range(wildcards):
    """[start, stop) of the samples of one capture part."""
    return list(CAPTURE_RANGES[int(wildcards.part)])


def final_outputs():
    outputs = [
        rules.make_shards.output.manifest,
        rules.capture_samples.output.samples,
        *capture_parts(),
    ]
    if config["capture"]["export_csv"]:
        outputs.append(rules.export_capture_csv.output.csv)
    return outputs
