# Stage 4a: DuckDB aggregation of the capture — one mergeable partial per capture part (map, runs
# where the part is), then one small reduce job into results/<run>/aggregate/spectra.duckdb.


rule aggregate_partial:
    input:
        part=rules.capture.output.part,
        code=package_code("aggregate_partial"),
    output:
        partial=directory(f"{RUN}/aggregate/partials/part_{{part}}"),
    log:
        f"{LOGS}/aggregate/partial_{{part}}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        context_length=setting("data", "context_length"),
        bins=setting("aggregate", "histogram_bins"),
    script:
        "../workflow_scripts/aggregate_partial.py"


rule aggregate:
    input:
        partials=aggregate_partials,
        parts=capture_parts,
        code=package_code("aggregate"),
    output:
        database=f"{RUN}/aggregate/spectra.duckdb",
        head_summary=f"{RUN}/aggregate/head_summary.parquet",
        head_summary_csv=f"{RUN}/aggregate/head_summary.csv",
        position_profile=f"{RUN}/aggregate/position_profile.parquet",
        position_profile_csv=f"{RUN}/aggregate/position_profile.csv",
    log:
        f"{LOGS}/aggregate/reduce.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        context_length=setting("data", "context_length"),
        bins=setting("aggregate", "histogram_bins"),
    script:
        "../workflow_scripts/aggregate.py"
