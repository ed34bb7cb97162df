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
        **MODEL_JOB_INPUTS,
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
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        **MODEL_JOB_RESOURCES,
        batch_size=setting("intervention", "batch_size"),
    params:
        **MODEL_JOB_PARAMS,
        head=head_spec,
        scales=head_scales,
        n_samples=head_n_samples,
        provenance=run_provenance,
    script:
        "../workflow_scripts/intervention_sweep.py"


rule check_baseline_sanity:
    input:
        **MODEL_JOB_INPUTS,
        code=package_code("check_intervention"),
    output:
        report=f"{RUN}/checks/baseline_sanity_L{{layer}}_H{{head}}.json",
    log:
        f"{LOGS}/checks/baseline_sanity_L{{layer}}_H{{head}}.log",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        **MODEL_JOB_RESOURCES,
    params:
        **MODEL_JOB_PARAMS,
        check=check_name,
        head=head_spec,
        scales=head_scales,
        n_samples=setting("intervention", "check_samples"),
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
