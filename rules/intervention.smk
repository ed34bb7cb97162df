# Stage 3: query-scaling sweeps, one job per configured head (wildcards layer/head), and the gate
# checks whose JSON files the analysis takes as inputs, so nothing downstream runs on a broken
# intervention.


checkpoint select_heads:
    input:
        parts=capture_parts,
        code=package_code("select_heads"),
    output:
        heads=f"{RUN}/intervention/selected_heads.json",
        correlations=f"{RUN}/intervention/head_correlations.csv",
    log:
        f"{LOGS}/select_heads.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/select_heads.py"


rule intervention_sweep:
    input:
        manifest=shard_files("manifest"),
        shards=shard_files("shards"),
        model=model_inputs,
        code=package_code("intervention_sweep"),
    output:
        tokens=f"{RUN}/intervention/L{{layer}}_H{{head}}/tokens.parquet",
        sweep=f"{RUN}/intervention/L{{layer}}_H{{head}}/sweep.parquet",
        scale_summary=f"{RUN}/intervention/L{{layer}}_H{{head}}/q_scale_intervention_results.csv",
        trends=f"{RUN}/intervention/L{{layer}}_H{{head}}/trend_analysis.csv",
    log:
        f"{LOGS}/intervention/L{{layer}}_H{{head}}.log",
    benchmark:
        f"{BENCHMARKS}/intervention/L{{layer}}_H{{head}}.tsv"
    wildcard_constraints:
        layer=r"\d+",
        head=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=model_gpus,
        batch_size=setting("intervention", "batch_size"),
        query_block_size=setting("capture", "query_block_size"),
    params:
        model=model_settings,
        model_path=model_path,
        head=head_spec,
        scales=head_scales,
        n_samples=head_n_samples,
        capture=capture_settings,
        provenance=run_provenance,
    script:
        "../workflow_scripts/intervention_sweep.py"


rule check_baseline_sanity:
    input:
        manifest=shard_files("manifest"),
        shards=shard_files("shards"),
        model=model_inputs,
        code=package_code("check_intervention"),
    output:
        report=f"{RUN}/checks/baseline_sanity_L{{layer}}_H{{head}}.json",
    log:
        f"{LOGS}/checks/baseline_sanity_L{{layer}}_H{{head}}.log",
    wildcard_constraints:
        layer=r"\d+",
        head=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=model_gpus,
        query_block_size=setting("capture", "query_block_size"),
    params:
        check=check_name,
        model=model_settings,
        model_path=model_path,
        head=head_spec,
        scales=head_scales,
        n_samples=setting("intervention", "check_samples"),
        capture=capture_settings,
    script:
        "../workflow_scripts/check_intervention.py"


use rule check_baseline_sanity as check_isolation with:
    output:
        report=f"{RUN}/checks/isolation_L{{layer}}_H{{head}}.json",
    log:
        f"{LOGS}/checks/isolation_L{{layer}}_H{{head}}.log",


use rule check_baseline_sanity as check_temperature_identity with:
    output:
        report=f"{RUN}/checks/temperature_identity_L{{layer}}_H{{head}}.json",
    log:
        f"{LOGS}/checks/temperature_identity_L{{layer}}_H{{head}}.log",
