# Helpers shared by rules/*.smk (config validation, output paths, input functions). No logic lives
# here beyond choosing paths; the work is in the spectra_attn package (installed by `make setup`,
# or by envs/*.post-deploy.sh inside a conda env).
import functools
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# Importing the package also sets OMP_WAIT_POLICY for the jobs (see spectra_attn/__init__.py).
from spectra_attn import config as spectra_config
from spectra_attn.run import preflight
from spectra_attn import provenance as spectra_provenance
from spectra_attn.data import shards as spectra_shards
from spectra_attn.data.corpus import hub_cache_dir, is_hub_id
from spectra_attn.gates import ATLAS_TOLERANCES, CHECKS
from spectra_attn.data.samples import sample_ranges
from spectra_attn.run.workflow import package_modules, stale_lock_hint

# The package's validator (same schema as `spectra config show`) fills defaults and names every
# unknown or invalid key at once, before any job is scheduled; then what the files can tell
# (model folder, corpus split, sequence counts), since a value that fails inside a job would
# fail only after Snakemake removed that job's earlier outputs. The files are read once, by the
# main process, not again by every job it spawns (a corpus folder may hold 60,000 files).
try:
    config.update(spectra_config.validate(config))
except spectra_config.ConfigError as error:
    raise WorkflowError(str(error)) from None
if workflow.is_main_process and (problems := preflight.problems(config)):
    raise WorkflowError(
        "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
    )

# Snakemake's own message for a lock left by a killed run names the --unlock flag; this one gives
# the two commands, with the arguments of this one.
if workflow.is_main_process and (hint := stale_lock_hint(Path.cwd(), sys.argv)):
    print(f"spectra: {hint}", file=sys.stderr)

RUN = f"results/{config['run_name']}"
# make_shards writes into a folder named by what the shards are made from (data keys, tokenizer,
# demo settings): a changed value writes beside finished shards, never over them, so a bad value
# that fails inside the job costs nothing, and going back finds them as they were. The run's
# results/<run>/data/ holds links to the shards in use (publish_shards).
SHARD_STORE = str(spectra_shards.store_dir(config))
LOGS = f"{RUN}/logs"
BENCHMARKS = f"{RUN}/benchmarks"
PACKAGE = Path(workflow.basedir) / "src" / "spectra_attn"
HUB_DATASET_DIR = str(hub_cache_dir(config["data"]["source"], config["data"]["split"]))


def package_code(script):
    """The package modules that workflow_scripts/<script>.py runs (read from its imports,
    transitively), declared as the job's inputs so that editing them reruns it (Snakemake tracks
    only the script itself). local(): they stay in the checkout even when a default storage
    provider (S3 on SageMaker) maps every other path to remote storage.
    """
    path = Path(workflow.basedir) / "workflow_scripts" / f"{script}.py"
    return [local(str(module)) for module in package_modules(path, PACKAGE)]


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
    """Where the model is loaded from: the built demo model when it is an input (its local copy,
    under a remote default storage), else the config's folder or hub id. A param computed from
    the input is not recorded by Snakemake (a "derived" param), so what identifies the model is
    passed as well, by model_settings()."""
    return input.model or config["model"]["name_or_path"]


@functools.cache
def _run_identity():
    return spectra_provenance.run_identity(workflow.basedir, config)


def run_provenance(wildcards, input):
    """Spectra's version, the workflow's git commit and dirty flag, and the resolved
    configuration's sha256 (spectra_attn.provenance.run_identity), computed once per Snakemake
    process. A function of input: a "derived" param, which Snakemake does not record, so a new
    commit, a dirty tree or an edited comment does not rerun every job; the jobs store it with
    their outputs (the model, corpus, versions and device they add themselves)."""
    return _run_identity()


def tokenizer_settings():
    """What identifies the tokenizer that makes the shards (a recorded param, like
    model_settings(); it is loaded from model_path)."""
    return spectra_shards.tokenizer_settings(config)


def model_settings():
    """What identifies the model a job runs, spectra_attn.model.loading.ModelSpec's fields: a recorded
    param, so changing the model, its dtype or revision, the device or the device map reruns
    every job that runs it. The script loads it from model_path. The device map's keys are
    there only when one is set, so that the params of a model on one device are as they were
    before the keys existed (and its finished jobs do not rerun)."""
    model = config["model"]
    settings = {
        "name_or_path": model["name_or_path"],
        "dtype": model["dtype"],
        "device": config["device"],
        "revision": model["revision"],
        "trust_remote_code": model["trust_remote_code"],
    }
    if model["device_map"] is not None:
        settings["device_map"] = model["device_map"]
        settings["max_memory_per_gpu"] = model["max_memory_per_gpu"]
    return settings


def model_gpus():
    """The `gpu` resource of a model job: model.gpus, which the job claims
    (spectra_attn.run.workflow.claim_job_gpus) and its device map spreads the layers over. A
    resource, not a param: it changes where layers run, not what they compute."""
    return config["model"]["gpus"]


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


def shard_settings():
    """The data keys that define the shards (params, and so the cache key: a change remakes
    them). data.tokenize_batch_size only sets how many documents are tokenized at once: it
    reaches make_shards as a resource and remakes nothing."""
    return spectra_shards.shard_settings(config)


def required_sequences():
    """The most sequences any sample count asks of the shards. make_shards refuses to finish
    with fewer (the shards it would leave could not serve the run); a resource, not a param, so
    changing a sample count neither remakes the shards nor changes their cache key."""
    return max(spectra_config.sample_counts(config).values())


def capture_settings():
    """The capture keys that define a metric, shared by capture, sweeps and checks (params: a
    change reruns them). capture.query_block_size only bounds memory, so it reaches the jobs as
    a resource, as the batch sizes do: changing it to fit a GPU reruns nothing."""
    keys = ("rope", "k_eff_threshold", "entropy_skip_tokens")
    return {key: config["capture"][key] for key in keys}


def intervention_heads():
    """intervention.heads, or with intervention.select: auto the heads chosen from the capture
    (available once the select_heads checkpoint has run)."""
    if config["intervention"]["select"] == "auto":
        selected = checkpoints.select_heads.get().output.heads
        return json.loads(Path(selected).read_text())["heads"]
    return config["intervention"]["heads"]


def head_entry(wildcards):
    """The intervention.heads entry of the job's layer and head."""
    for entry in intervention_heads():
        if (entry["layer"], entry["head"]) == (
            int(wildcards.layer),
            int(wildcards.head),
        ):
            return entry
    raise WorkflowError(
        f"L{wildcards.layer}_H{wildcards.head} is not in intervention.heads of the config"
    )


def head_spec(wildcards):
    """The job's head: spectra_attn.model.intervention.HeadSpec's fields."""
    entry = head_entry(wildcards)
    return {"layer": entry["layer"], "head": entry["head"], "role": entry["role"]}


def head_scales(wildcards):
    """The head's own scales if it has them, else intervention.scales."""
    return head_entry(wildcards).get("scales", config["intervention"]["scales"])


def head_n_samples(wildcards):
    return head_entry(wildcards).get("n_samples", config["intervention"]["n_samples"])


def check_name(wildcards, output):
    """baseline_sanity, isolation or temperature_identity, from the report's file name."""
    return Path(output.report).name.split("_L")[0]


def intervention_outputs():
    """Every head's sweep tables and gate-check reports."""
    outputs = []
    for entry in intervention_heads():
        head = f"L{entry['layer']}_H{entry['head']}"
        outputs += [f"{RUN}/intervention/{head}/sweep.parquet"]
        outputs += [f"{RUN}/checks/{check}_{head}.json" for check in CHECKS]
    return outputs


def aggregate_partials():
    return [
        f"{RUN}/aggregate/partials/part_{index:04d}"
        for index in range(len(CAPTURE_RANGES))
    ]


def atlas_parts():
    return [
        f"{RUN}/atlas/part_{index:04d}.parquet" for index in range(len(CAPTURE_RANGES))
    ]


def atlas_scales():
    return config["atlas"]["scales"] or config["intervention"]["scales"]


def atlas_tolerance():
    """Relative tolerance of the atlas-vs-sweep check for the model's dtype."""
    return ATLAS_TOLERANCES[config["model"]["dtype"]]


def head_files(template):
    return [
        template.format(head=f"L{entry['layer']}_H{entry['head']}")
        for entry in intervention_heads()
    ]


def sweep_tables(wildcards):
    return head_files(f"{RUN}/intervention/{{head}}/sweep.parquet")


def token_tables(wildcards):
    return head_files(f"{RUN}/intervention/{{head}}/tokens.parquet")


def trend_tables(wildcards):
    return head_files(f"{RUN}/intervention/{{head}}/trend_analysis.csv")


def check_reports(wildcards):
    """Every gate-check report: the gain analysis runs only once all of them have passed."""
    return [
        path
        for check in CHECKS
        for path in head_files(f"{RUN}/checks/{check}_{{head}}.json")
    ]


def selected_heads_file(wildcards):
    """selected_heads.json with intervention.select: auto (the verdict page names the correlation
    that chose the heads); nothing with explicit heads. A list either way, so that
    input.selection is one."""
    if config["intervention"]["select"] == "auto":
        return [checkpoints.select_heads.get().output.heads]
    return []


def verdict_settings():
    """What the verdict page says about the run: spectra_attn.analysis.verdict.Settings's fields."""
    return {
        "select": config["intervention"]["select"],
        "model": config["model"]["name_or_path"],
        "demo_model": spectra_config.uses_demo_model(config),
        "run_name": config["run_name"],
    }


def final_outputs(wildcards):
    """Everything the default target builds (an input function: with intervention.select: auto
    the heads are known only after the capture)."""
    outputs = [
        rules.publish_shards.output.manifest,
        rules.capture_samples.output.samples,
        *capture_parts(),
        *intervention_outputs(),
        rules.aggregate.output.database,
        rules.gain.output.verdict,
        rules.verdict_page.output.html,
        rules.verdict_page.output.markdown,
        rules.provenance.output.text,
        rules.describe_config.output.text,
    ]
    if config["capture"]["export_csv"]:
        outputs.append(rules.export_capture_csv.output.csv)
    return outputs


def finished_outputs(wildcards):
    """Every output of the run but the configuration's description, which is written after
    them: it must describe a configuration that ran, not one that failed on the way."""
    described = rules.describe_config.output.text
    return [path for path in final_outputs(wildcards) if path != described]
