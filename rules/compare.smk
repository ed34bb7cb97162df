# Stage 6 (models: only): the models side by side, read from each run's own outputs, under
# results/<run_name>/comparison/ (the top-level run_name names the comparison).


rule compare_models:
    input:
        verdicts=each_run(rules.gain.output.verdict),
        atlases=each_run(rules.atlas_gain.output.gains),
        head_summaries=each_run(rules.aggregate.output.head_summary),
        code=package_code("compare_models"),
    output:
        table=report(
            f"{COMPARISON}/comparison.csv",
            caption="../report/comparison_table.rst",
            category="Comparison",
        ),
        database=f"{COMPARISON}/comparison.duckdb",
        verdicts=report(
            f"{COMPARISON}/comparison_verdicts.png",
            caption="../report/comparison_verdicts.rst",
            category="Comparison",
        ),
        atlas=report(
            f"{COMPARISON}/comparison_atlas_depth.png",
            caption="../report/comparison_atlas_depth.rst",
            category="Comparison",
        ),
        correlations=report(
            f"{COMPARISON}/comparison_correlations.png",
            caption="../report/comparison_correlations.rst",
            category="Comparison",
        ),
        svg=expand(
            f"{COMPARISON}/comparison_{{name}}.svg",
            name=["verdicts", "atlas_depth", "correlations"],
        ),
    log:
        COMPARISON_LOG,
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        runs=[
            {"run_name": run, "model": RUNS[run]["model"]["name_or_path"]}
            for run in RUNS
        ],
    script:
        "../workflow_scripts/compare_models.py"
