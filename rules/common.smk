# Helpers shared by rules/*.smk (config validation, output paths, input functions). No logic lives
# here beyond choosing paths; the work is in the spectra_attn package (installed by `make setup`,
# or by envs/*.post-deploy.sh inside a conda env).
import functools
import json
import re
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

# run_name → that run's configuration: one per models: entry (the top-level sections with the
# entry's keys laid over them), or the configuration itself. Every rule below results/{run}/
# takes its values from RUNS[wildcards.run], so a changed entry reruns its own jobs only.
RUNS = spectra_config.resolve_runs(config)
SEVERAL = bool(config["models"])
HUB_DATASET_DIR = str(hub_cache_dir(config["data"]["source"], config["data"]["split"]))
# run_name → the shard store it reads: make_shards writes into a folder named by what the shards
# are made from (data keys, tokenizer, demo settings), so a changed value writes beside finished
# shards, never over them, and going back finds them as they were. Models with the same tokenizer
# share one store (spectra_attn.data.shards.assign_stores). results/<run>/data/ links to it.
STORES = {run: str(store) for run, store in spectra_shards.assign_stores(RUNS).items()}
# store → the first run reading it: its settings make the shards.
STORE_OWNERS = {}
for _run, _store in STORES.items():
    STORE_OWNERS.setdefault(_store, _run)

if workflow.is_main_process:
    # fetch_dataset downloads the top-level data.source's split only.
    _problems = [
        f"{run}: config key 'data.source': a hub dataset is downloaded for the top-level "
        "data.source and data.split only; give the entry a local folder"
        for run, run_config in RUNS.items()
        if is_hub_id(run_config["data"]["source"])
        and str(
            hub_cache_dir(run_config["data"]["source"], run_config["data"]["split"])
        )
        != HUB_DATASET_DIR
    ]
    _problems += [
        (f"{run}: " if SEVERAL else "") + problem
        for run, run_config in RUNS.items()
        for problem in preflight.problems(run_config, store=STORES[run])
    ]
    if _problems:
        raise WorkflowError(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in _problems)
        )

# Snakemake's own message for a lock left by a killed run names the --unlock flag; this one gives
# the two commands, with the arguments of this one.
if workflow.is_main_process and (hint := stale_lock_hint(Path.cwd(), sys.argv)):
    print(f"spectra: {hint}", file=sys.stderr)


# Every wildcard's form, declared once for every rule.
wildcard_constraints:
    run="|".join(re.escape(run) for run in RUNS),
    part=r"\d{4}",
    layer=r"\d+",
    head=r"\d+",
    store="|".join(re.escape(Path(store).name) for store in STORE_OWNERS),
    demo_model="|".join(map(re.escape, spectra_config.demo_models(RUNS))) or "(?!)",


RUN = "results/{run}"
LOGS = f"{RUN}/logs"
BENCHMARKS = f"{RUN}/benchmarks"
# One store (a single model, or models that share a tokenizer): make_shards' paths are fixed, its
# log where a single-model run has always had it. Several: the store is a wildcard.
if len(STORE_OWNERS) == 1:
    SHARD_STORE = next(iter(STORE_OWNERS))
    MAKE_SHARDS_LOG = f"results/{STORE_OWNERS[SHARD_STORE]}/logs/make_shards.log"
else:
    SHARD_STORE = f"{spectra_shards.STORE_ROOT}/{{store}}"
    MAKE_SHARDS_LOG = "results/logs/make_shards/{store}.log"
# The comparison of the models (models: only), named by the top-level run_name.
COMPARISON = f"results/{config['run_name']}/comparison"
COMPARISON_LOG = f"results/{config['run_name']}/logs/compare_models.log"
PACKAGE = Path(workflow.basedir) / "src" / "spectra_attn"


def run_config(wildcards):
    """The configuration of the job's run."""
    return RUNS[wildcards.run]


def described_config(wildcards):
    """The run's configuration for describe_config, its keys sorted at every level: Snakemake
    records a param by its repr, so the order in which config files happen to give the keys
    must not count (the description lists them sorted anyway)."""

    def sorted_keys(value):
        if isinstance(value, dict):
            return {key: sorted_keys(value[key]) for key in sorted(value)}
        if isinstance(value, list):
            return [sorted_keys(item) for item in value]
        return value

    return sorted_keys(run_config(wildcards))


def setting(*keys):
    """A function of the job's wildcards: the value at ``keys`` of its run's configuration (a
    param or resource; a param is recorded, so changing it reruns that run's jobs only).
    """

    def value(wildcards):
        found = run_config(wildcards)
        for key in keys:
            found = found[key]
        return found

    return value


def job_store(wildcards):
    """The shard store of a make_shards job: the only one, or its store wildcard's."""
    if "store" in wildcards.keys():
        return f"{spectra_shards.STORE_ROOT}/{wildcards.store}"
    return SHARD_STORE


def store_config(wildcards):
    """The configuration whose settings make the job's shard store (its first run's)."""
    return RUNS[STORE_OWNERS[job_store(wildcards)]]


def store_setting(*keys):
    """As setting(), of the configuration that makes the job's shard store."""

    def value(wildcards):
        found = store_config(wildcards)
        for key in keys:
            found = found[key]
        return found

    return value


def shard_files(name):
    """A function of the job's wildcards: make_shards' ``name`` output (shards, manifest) of
    the store the job's run reads."""

    def path(wildcards):
        return f"{STORES[wildcards.run]}/{Path(getattr(rules.make_shards.output, name)).name}"

    return path


def package_code(script):
    """The package modules that workflow_scripts/<script>.py runs (read from its imports,
    transitively), declared as the job's inputs so that editing them reruns it (Snakemake tracks
    only the script itself). local(): they stay in the checkout even when a default storage
    provider (S3 on SageMaker) maps every other path to remote storage.
    """
    path = Path(workflow.basedir) / "workflow_scripts" / f"{script}.py"
    return [local(str(module)) for module in package_modules(path, PACKAGE)]


def demo_model_dir(run):
    """The demo model folder the run's configuration names (resources/demo/model or
    resources/demo/models/<name>), or None."""
    if not spectra_config.uses_demo_model(run):
        return None
    name = Path(run["model"]["name_or_path"])
    if name == Path(spectra_config.DEMO_MODEL_PATH):
        return rules.build_demo_model.output.model_dir
    return f"{spectra_config.DEMO_MODELS_ROOT}/{name.name}"


def other_demo_settings(wildcards):
    """The demo settings of the further demo model resources/demo/models/<demo_model>."""
    return spectra_config.demo_models(RUNS)[wildcards.demo_model]


def model_inputs(wildcards):
    """The demo model folder when the run names one; nothing for a hub id or a user's folder."""
    return demo_model_dir(run_config(wildcards)) or []


def store_model_inputs(wildcards):
    """The demo model whose tokenizer makes the job's shard store, if one does."""
    return demo_model_dir(store_config(wildcards)) or []


def corpus_inputs(wildcards):
    """What the data stage reads: the demo corpus, a hub download, or nothing (a local folder)."""
    data = store_config(wildcards)
    if spectra_config.uses_demo_corpus(data):
        return rules.build_demo_corpus.output.corpus_dir
    if is_hub_id(data["data"]["source"]):
        return rules.fetch_dataset.output.dataset_dir
    return []


def corpus_dir(wildcards, input):
    """The local directory the data stage reads: its corpus input (demo corpus or hub download)
    when it has one, else data.source itself."""
    return input.corpus or store_config(wildcards)["data"]["source"]


def model_path(wildcards, input):
    """Where the model is loaded from: the built demo model when it is an input (its local copy,
    under a remote default storage), else the config's folder or hub id. A param computed from
    the input is not recorded by Snakemake (a "derived" param), so what identifies the model is
    passed as well, by model_settings()."""
    return input.model or run_config(wildcards)["model"]["name_or_path"]


def tokenizer_path(wildcards, input):
    """Where make_shards loads the tokenizer from (model_path of the store's first run)."""
    return input.model or store_config(wildcards)["model"]["name_or_path"]


@functools.cache
def _run_identity(run):
    return spectra_provenance.run_identity(workflow.basedir, RUNS[run])


def run_provenance(wildcards, input):
    """Spectra's version, the workflow's git commit and dirty flag, and the resolved
    configuration's sha256 (spectra_attn.provenance.run_identity), computed once per run and
    Snakemake process. A function of input: a "derived" param, which Snakemake does not record,
    so a new commit, a dirty tree or an edited comment does not rerun every job; the jobs store it
    with their outputs (the model, corpus, versions and device they add themselves)."""
    return _run_identity(wildcards.run)


def tokenizer_settings(wildcards):
    """What identifies the tokenizer that makes the shards (a recorded param, like
    model_settings(); it is loaded from tokenizer_path)."""
    return spectra_shards.tokenizer_settings(store_config(wildcards))


def model_settings(wildcards):
    """What identifies the model a job runs, spectra_attn.model.loading.ModelSpec's fields: a
    recorded param, so changing the model, its dtype or revision, the device or the device map
    reruns every job of the run that runs it. The script loads it from model_path. The device
    map's keys are there only when one is set, so that the params of a model on one device are as
    they were before the keys existed (and its finished jobs do not rerun)."""
    run = run_config(wildcards)
    model = run["model"]
    settings = {
        "name_or_path": model["name_or_path"],
        "dtype": model["dtype"],
        "device": run["device"],
        "revision": model["revision"],
        "trust_remote_code": model["trust_remote_code"],
    }
    if model["device_map"] is not None:
        settings["device_map"] = model["device_map"]
        settings["max_memory_per_gpu"] = model["max_memory_per_gpu"]
    return settings


def model_gpus(wildcards):
    """The `gpu` resource of a model job: its run's model.gpus, which the job claims
    (spectra_attn.run.workflow.claim_job_gpus) and its device map spreads the layers over. A
    resource, not a param: it changes where layers run, not what they compute."""
    return run_config(wildcards)["model"]["gpus"]


def capture_ranges(run):
    capture = RUNS[run]["capture"]
    return sample_ranges(capture["n_samples"], capture["samples_per_job"])


def filled(path, **wildcards):
    """A rule's output ``path`` (``rules.<rule>.output.<name>``) with ``wildcards`` filled in,
    by Snakemake's own apply_wildcards, which keeps what Snakemake attached to the path: under a
    default storage provider (S3 on SageMaker) it stands for a storage object, which str.format
    would cut it loose from and expand() refuses."""
    return path.apply_wildcards(wildcards)


def each_run(path):
    """A rule's output ``path`` for every run."""
    return [filled(path, run=run) for run in RUNS]


def part_ids(run):
    """The capture parts' numbers (the part wildcard) of a run: one per range of
    capture.samples_per_job samples."""
    return [f"{index:04d}" for index in range(len(capture_ranges(run)))]


def capture_parts(wildcards):
    """One Parquet part per range of capture.samples_per_job samples."""
    return capture_part_files(wildcards.run)


def capture_part_files(run):
    return [
        filled(rules.capture.output.part, run=run, part=part) for part in part_ids(run)
    ]


def capture_sample_range(wildcards):
    """[start, stop) of the samples of one capture part."""
    return list(capture_ranges(wildcards.run)[int(wildcards.part)])


def shard_settings(wildcards):
    """The data keys that define the shards (params, and so the cache key: a change remakes
    them). data.tokenize_batch_size only sets how many documents are tokenized at once: it
    reaches make_shards as a resource and remakes nothing."""
    return spectra_shards.shard_settings(store_config(wildcards))


def required_sequences(wildcards):
    """The most sequences any sample count of the runs reading the store asks of the shards.
    make_shards refuses to finish with fewer (the shards it would leave could not serve the run);
    a resource, not a param, so changing a sample count neither remakes the shards nor changes
    their cache key."""
    store = job_store(wildcards)
    return max(
        count
        for run, run_store in STORES.items()
        if run_store == store
        for count in spectra_config.sample_counts(RUNS[run]).values()
    )


def capture_settings(wildcards):
    """The capture keys that define a metric, shared by capture, sweeps and checks (params: a
    change reruns them). capture.query_block_size only bounds memory, so it reaches the jobs as
    a resource, as the batch sizes do: changing it to fit a GPU reruns nothing."""
    keys = ("rope", "k_eff_threshold", "entropy_skip_tokens")
    return {key: run_config(wildcards)["capture"][key] for key in keys}


def intervention_heads(run):
    """intervention.heads of the run, or with intervention.select: auto the heads chosen from
    its capture (available once its select_heads checkpoint has run)."""
    if RUNS[run]["intervention"]["select"] == "auto":
        selected = checkpoints.select_heads.get(run=run).output.heads
        return json.loads(Path(selected).read_text())["heads"]
    return RUNS[run]["intervention"]["heads"]


def head_entry(wildcards):
    """The intervention.heads entry of the job's layer and head."""
    for entry in intervention_heads(wildcards.run):
        if (entry["layer"], entry["head"]) == (
            int(wildcards.layer),
            int(wildcards.head),
        ):
            return entry
    raise WorkflowError(
        f"L{wildcards.layer}_H{wildcards.head} is not in intervention.heads of run "
        f"{wildcards.run}"
    )


def head_spec(wildcards):
    """The job's head: spectra_attn.model.intervention.HeadSpec's fields."""
    entry = head_entry(wildcards)
    return {"layer": entry["layer"], "head": entry["head"], "role": entry["role"]}


def head_scales(wildcards):
    """The head's own scales if it has them, else intervention.scales."""
    return head_entry(wildcards).get(
        "scales", run_config(wildcards)["intervention"]["scales"]
    )


def head_n_samples(wildcards):
    return head_entry(wildcards).get(
        "n_samples", run_config(wildcards)["intervention"]["n_samples"]
    )


def check_name(wildcards, output):
    """baseline_sanity, isolation or temperature_identity, from the report's file name."""
    return Path(output.report).name.split("_L")[0]


def head_files(run, template):
    """A rule's output ``template`` (with the {run}, {layer} and {head} wildcards) for each
    intervened head of the run."""
    return [
        filled(template, run=run, layer=entry["layer"], head=entry["head"])
        for entry in intervention_heads(run)
    ]


def check_report_files(run):
    """Every gate-check report of the run, check by check."""
    return [
        path
        for check in CHECKS
        for path in head_files(run, getattr(rules, f"check_{check}").output.report)
    ]


def intervention_outputs(run):
    """Every head's sweep tables and gate-check reports."""
    return [
        *head_files(run, rules.intervention_sweep.output.sweep),
        *check_report_files(run),
    ]


def aggregate_partials(wildcards):
    return [
        filled(rules.aggregate_partial.output.partial, run=wildcards.run, part=part)
        for part in part_ids(wildcards.run)
    ]


def atlas_parts(wildcards):
    return [
        filled(rules.atlas.output.part, run=wildcards.run, part=part)
        for part in part_ids(wildcards.run)
    ]


def atlas_scales(wildcards):
    run = run_config(wildcards)
    return run["atlas"]["scales"] or run["intervention"]["scales"]


def atlas_tolerance(wildcards):
    """Relative tolerance of the atlas-vs-sweep check for the model's dtype."""
    return ATLAS_TOLERANCES[run_config(wildcards)["model"]["dtype"]]


def sweep_tables(wildcards):
    return head_files(wildcards.run, rules.intervention_sweep.output.sweep)


def token_tables(wildcards):
    return head_files(wildcards.run, rules.intervention_sweep.output.tokens)


def trend_tables(wildcards):
    return head_files(wildcards.run, rules.intervention_sweep.output.trends)


def check_reports(wildcards):
    """Every gate-check report: the gain analysis runs only once all of them have passed."""
    return check_report_files(wildcards.run)


def selected_heads_file(wildcards):
    """selected_heads.json with intervention.select: auto (the verdict page names the correlation
    that chose the heads); nothing with explicit heads. A list either way, so that
    input.selection is one."""
    if run_config(wildcards)["intervention"]["select"] == "auto":
        return [checkpoints.select_heads.get(run=wildcards.run).output.heads]
    return []


def verdict_settings(wildcards):
    """What the verdict page says about the run: spectra_attn.analysis.verdict.Settings's fields."""
    run = run_config(wildcards)
    return {
        "select": run["intervention"]["select"],
        "model": run["model"]["name_or_path"],
        "demo_model": spectra_config.uses_demo_model(run),
        "run_name": run["run_name"],
    }


def run_outputs(run):
    """Everything the default target builds of one run (with intervention.select: auto the
    heads are known only after the capture)."""
    outputs = [
        *(
            filled(path, run=run)
            for path in (
                rules.publish_shards.output.manifest,
                rules.capture_samples.output.samples,
                rules.aggregate.output.database,
                rules.gain.output.verdict,
                rules.verdict_page.output.html,
                rules.verdict_page.output.markdown,
                rules.provenance.output.text,
                rules.describe_config.output.text,
            )
        ),
        *capture_part_files(run),
        *intervention_outputs(run),
    ]
    if RUNS[run]["capture"]["export_csv"]:
        outputs.append(filled(rules.export_capture_csv.output.csv, run=run))
    return outputs


def final_outputs(wildcards):
    """Every run's outputs, and with models: the comparison of the models."""
    outputs = [path for run in RUNS for path in run_outputs(run)]
    if SEVERAL:
        outputs += [rules.compare_models.output.table]
    return outputs


def finished_outputs(wildcards):
    """Every output of the run but the configuration's description, which is written after
    them: it must describe a configuration that ran, not one that failed on the way."""
    described = filled(rules.describe_config.output.text, run=wildcards.run)
    return [path for path in run_outputs(wildcards.run) if path != described]


# What every rule that runs the model shares (capture, atlas, the sweeps and the gate checks),
# written once: the shards and the model it reads, one GPU slot per model.gpus, the query block
# that bounds its memory, and the params that identify the model and define a metric.
MODEL_JOB_INPUTS = {
    "manifest": shard_files("manifest"),
    "shards": shard_files("shards"),
    "model": model_inputs,
}
MODEL_JOB_RESOURCES = {
    "gpu": model_gpus,
    "query_block_size": setting("capture", "query_block_size"),
}
MODEL_JOB_PARAMS = {
    "model": model_settings,
    "model_path": model_path,
    "capture": capture_settings,
}
