# Stage 1: raw SlimPajama text → documents of the kept sources → tokens → fixed-length chunks in
# resources/shards/<settings digest>/shards/shard_NNNN.npz, with a manifest of counts, tokenizer
# and checksums, linked into results/<run>/data/.


# The one rule without its package modules as inputs (package_code): an edit of corpus.py must not
# download the dataset again.
rule fetch_dataset:
    output:
        dataset_dir=directory(HUB_DATASET_DIR),
    log:
        f"results/{config['run_name']}/logs/fetch_dataset.log",
    retries: 2
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        dataset_id=config["data"]["source"],
        split=config["data"]["split"],
    script:
        "../workflow_scripts/fetch_dataset.py"


# cache: True: with `snakemake --cache`, a checkout that would make the same shards links them from
# $SNAKEMAKE_OUTPUT_CACHE (docs/reproducibility.md, "Sharing shards and the demo model between
# checkouts"). The key hashes the script, params, the declared package modules and the keys of
# the jobs upstream, so every value that changes the shards must arrive through params: or input:,
# never from config in the script. No benchmark: Snakemake refuses one on a cached rule.
rule make_shards:
    input:
        corpus=corpus_inputs,
        model=store_model_inputs,
        code=package_code("make_shards"),
    output:
        shards=directory(f"{SHARD_STORE}/shards"),
        manifest=f"{SHARD_STORE}/manifest.json",
    log:
        MAKE_SHARDS_LOG,
    cache: True
    conda:
        "../envs/data.yaml"
    threads: 2
    resources:
        tokenize_batch_size=store_setting("data", "tokenize_batch_size"),
        required_sequences=required_sequences,
    params:
        source=corpus_dir,
        split=store_setting("data", "split"),
        tokenizer=tokenizer_settings,
        tokenizer_path=tokenizer_path,
        data=shard_settings,
    script:
        "../workflow_scripts/make_shards.py"


# The shards in use, where the run's other outputs are: links to make_shards' files (no copy).
# Nothing reads them back (the model jobs read make_shards' outputs), so publishing again never
# reruns anything.
rule publish_shards:
    input:
        shards=shard_files("shards"),
        manifest=shard_files("manifest"),
        code=package_code("publish_shards"),
    output:
        shards=directory(f"{RUN}/data/shards"),
        manifest=f"{RUN}/data/manifest.json",
    log:
        f"{LOGS}/publish_shards.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/publish_shards.py"
