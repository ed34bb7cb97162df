# Stage 2: per-token attention metrics of every layer and head, one Parquet part per range of
# samples (a cluster runs the parts on many GPUs at once), and the samples table beside them.


rule capture_samples:
    input:
        manifest=shard_files("manifest"),
        code=package_code("capture_samples"),
    output:
        samples=f"{RUN}/capture/samples.parquet",
    log:
        f"{LOGS}/capture_samples.log",
    conda:
        "../envs/data.yaml"
    params:
        n_samples=setting("capture", "n_samples"),
    script:
        "../workflow_scripts/capture_samples.py"


rule capture:
    input:
        **MODEL_JOB_INPUTS,
        code=package_code("capture"),
    output:
        part=f"{RUN}/capture/part_{{part}}.parquet",
    log:
        f"{LOGS}/capture/part_{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/capture/part_{{part}}.tsv"
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        **MODEL_JOB_RESOURCES,
        batch_size=setting("capture", "batch_size"),
    params:
        **MODEL_JOB_PARAMS,
        sample_range=capture_sample_range,
        provenance=run_provenance,
    script:
        "../workflow_scripts/capture.py"


rule export_capture_csv:
    input:
        parts=capture_parts,
        code=package_code("export_capture_csv"),
    output:
        csv=f"{RUN}/capture/attention_metrics.csv",
    log:
        f"{LOGS}/export_capture_csv.log",
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/export_capture_csv.py"
