# The offline demo: a SlimPajama-627B-layout corpus written from the Python standard library, and a
# small Llama (GQA, RoPE) with a byte-level BPE tokenizer, trained briefly and deterministically on
# its train split. Used only while config points model.name_or_path / data.source at them.
# Both are cache: True, like make_shards (see rules/data.smk): with `--cache`, checkouts share them.
# The corpus is cached too because otherwise a checkout taking the model from the cache would still
# write the corpus (the cache is consulted when a job runs, not when the DAG is built).


rule build_demo_corpus:
    input:
        code=package_code("build_demo_corpus"),
    output:
        corpus_dir=directory("resources/demo/slimpajama"),
    log:
        "results/logs/build_demo_corpus.log",
    cache: True
    conda:
        "../envs/data.yaml"
    params:
        seed=config["seed"],
    script:
        "../workflow_scripts/build_demo_corpus.py"


rule build_demo_model:
    input:
        corpus_dir=rules.build_demo_corpus.output.corpus_dir,
        code=package_code("build_demo_model"),
    output:
        model_dir=directory("resources/demo/model"),
    log:
        "results/logs/build_demo_model.log",
    cache: True
    conda:
        "../envs/model.yaml"
    threads: 2
    params:
        demo=config["demo"],
        seed=config["seed"],
    script:
        "../workflow_scripts/build_demo_model.py"


# A further demo model of a several-model configuration (models:), built from its entry's demo
# settings at resources/demo/models/<name>; resources/demo/model stays the top-level settings' one.
use rule build_demo_model as build_other_demo_model with:
    output:
        model_dir=directory("resources/demo/models/{demo_model}"),
    log:
        "results/logs/build_demo_model/{demo_model}.log",
    params:
        demo=other_demo_settings,
        seed=config["seed"],
