# Stage 4b/5: the gain atlas of every head (temperature rescaling, one job per capture range), the
# gain analysis of the intervened heads — gated by every check report — the figures, wrapped for
# `snakemake --report`.


rule atlas:
    input:
        **MODEL_JOB_INPUTS,
        code=package_code("atlas"),
    output:
        part=f"{RUN}/atlas/part_{{part}}.parquet",
    log:
        f"{LOGS}/atlas/part_{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/atlas/part_{{part}}.tsv"
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        **MODEL_JOB_RESOURCES,
        batch_size=setting("capture", "batch_size"),
    params:
        **MODEL_JOB_PARAMS,
        sample_range=capture_sample_range,
        scales=atlas_scales,
    script:
        "../workflow_scripts/atlas.py"


rule check_atlas_vs_sweep:
    input:
        atlas=atlas_parts,
        sweeps=sweep_tables,
        code=package_code("check_atlas_vs_sweep"),
    output:
        report=f"{RUN}/checks/atlas_vs_sweep.json",
    log:
        f"{LOGS}/checks/atlas_vs_sweep.log",
    conda:
        "../envs/analysis.yaml"
    params:
        tolerance=atlas_tolerance,
    script:
        "../workflow_scripts/check_atlas_vs_sweep.py"


rule atlas_gain:
    input:
        parts=atlas_parts,
        code=package_code("atlas_gain"),
    output:
        gains=f"{RUN}/atlas/atlas_gain.csv",
    log:
        f"{LOGS}/atlas/gain.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/atlas_gain.py"


rule gain:
    input:
        sweeps=sweep_tables,
        trends=trend_tables,
        checks=check_reports,
        atlas_check=rules.check_atlas_vs_sweep.output.report,
        atlas=rules.atlas_gain.output.gains,
        code=package_code("gain"),
    output:
        summary=f"{RUN}/gain/gain_summary.csv",
        verdict=f"{RUN}/gain/verdict.json",
    log:
        f"{LOGS}/gain.log",
    conda:
        "../envs/analysis.yaml"
    params:
        bootstrap_samples=setting("gain", "bootstrap_samples"),
        seed=setting("seed"),
    script:
        "../workflow_scripts/gain.py"


rule plots:
    input:
        sweeps=sweep_tables,
        gain=rules.gain.output.summary,
        verdict=rules.gain.output.verdict,
        head_summary=rules.aggregate.output.head_summary,
        positions=rules.aggregate.output.position_profile,
        atlas=rules.atlas_gain.output.gains,
        code=package_code("plots"),
    output:
        panels=report(
            f"{RUN}/plots/intervention_panels.png",
            caption="../report/intervention_panels.rst",
            category="Intervention",
        ),
        downstream=report(
            f"{RUN}/plots/downstream_effects.png",
            caption="../report/downstream_effects.rst",
            category="Intervention",
        ),
        comparison=report(
            f"{RUN}/plots/gain_comparison.png",
            caption="../report/gain_comparison.rst",
            category="Gain",
        ),
        atlas=report(
            f"{RUN}/plots/heatmap_atlas_gain.png",
            caption="../report/heatmap_atlas_gain.rst",
            category="Gain",
        ),
        # The query-norm–entropy correlation per head ("phase 0" in the original project: the
        # file keeps that name, which users' scripts read).
        correlation=report(
            f"{RUN}/plots/heatmap_phase0_correlation.png",
            caption="../report/heatmap_qnorm_entropy_correlation.rst",
            category="Capture",
        ),
        heatmaps=report(
            directory(f"{RUN}/plots/metric_heatmaps"),
            patterns=["{name}.png"],
            caption="../report/metric_heatmaps.rst",
            category="Capture",
        ),
        positions=report(
            f"{RUN}/plots/position_profiles.png",
            caption="../report/position_profiles.rst",
            category="Capture",
        ),
        gain_fits=report(
            directory(f"{RUN}/plots/gain_fits"),
            patterns=["{name}.png"],
            caption="../report/gain_fits.rst",
            category="Gain",
        ),
        # Each figure is also written as SVG beside its PNG (for papers); declared so that
        # Snakemake tracks and cleans them too.
        svg=expand(
            f"{RUN}/plots/{{name}}.svg",
            allow_missing=True,
            name=[
                "intervention_panels",
                "downstream_effects",
                "gain_comparison",
                "heatmap_atlas_gain",
                "heatmap_phase0_correlation",
                "position_profiles",
            ],
        ),
    log:
        f"{LOGS}/plots.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/plots.py"


rule verdict_page:
    input:
        verdict=rules.gain.output.verdict,
        gains=rules.gain.output.summary,
        sweeps=sweep_tables,
        trends=trend_tables,
        checks=check_reports,
        atlas_check=rules.check_atlas_vs_sweep.output.report,
        atlas=rules.atlas_gain.output.gains,
        head_summary=rules.aggregate.output.head_summary,
        selection=selected_heads_file,
        comparison=rules.plots.output.comparison,
        panels=rules.plots.output.panels,
        downstream=rules.plots.output.downstream,
        atlas_figure=rules.plots.output.atlas,
        code=package_code("verdict_page"),
    output:
        html=report(
            f"{RUN}/plots/verdict.html",
            caption="../report/verdict.rst",
            category="Verdict",
        ),
        markdown=f"{RUN}/plots/verdict.md",
    log:
        f"{LOGS}/verdict_page.log",
    conda:
        "../envs/analysis.yaml"
    params:
        settings=verdict_settings,
    script:
        "../workflow_scripts/verdict_page.py"


rule provenance:
    input:
        capture=capture_parts,
        sweeps=sweep_tables,
        tokens=token_tables,
        database=rules.aggregate.output.database,
        verdict=rules.gain.output.verdict,
        code=package_code("provenance"),
    output:
        text=report(
            f"{RUN}/provenance.txt",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        f"{LOGS}/provenance.log",
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        run_name=setting("run_name"),
    script:
        "../workflow_scripts/provenance.py"


rule describe_config:
    input:
        finished=finished_outputs,
        code=package_code("describe_config"),
    output:
        text=report(
            f"{RUN}/configuration.txt",
            caption="../report/configuration.rst",
            category="Configuration",
        ),
    log:
        f"{LOGS}/describe_config.log",
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        config=described_config,
    script:
        "../workflow_scripts/describe_config.py"
