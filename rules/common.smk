# Helpers for the rule files: config validation, output paths, input functions. No logic lives
# here beyond choosing paths; the work is in the spectra_attn package.
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

# Rule jobs import spectra_attn from this checkout even inside a conda env or on a cluster node.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(workflow.basedir) / "src"), os.environ.get("PYTHONPATH")) if p
)

from spectra_attn import config as spectra_config
from spectra_attn.corpus import hub_cache_dir, is_hub_id

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
    """Package modules a rule runs, as inputs: editing them reruns the rule (Snakemake tracks
    only the script itself)."""
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


def corpus_dir():
    """The local directory the data stage reads (the download folder for a hub id)."""
    if is_hub_id(config["data"]["source"]):
        return HUB_DATASET_DIR
    return config["data"]["source"]


def final_outputs():
    return [rules.make_shards.output.manifest]
