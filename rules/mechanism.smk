# The paper's mechanism, measured (docs/analysis.md, "Mechanism"): per backbone, over every trained token,
# inside the text encoders (the position probe, the residual-update ratio, contextualization, semantic
# directions, and decoding where a text encoder is a language model) and the denoiser (cross-attention
# maps). Each job loads its backbone once; the tables are Parquet, the figures land in the report.


rule position_probe:
    input:
        model=model_json,
    output:
        run_path("mechanism/{backbone}/probe.safetensors"),
    log:
        "logs/position_probe/{backbone}.log",
    benchmark:
        "benchmarks/position_probe/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    params:
        probe=lambda wc: MECHANISM["probe"],
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/position_probe.py"


rule positional_attenuation:
    input:
        probe=run_path("mechanism/{backbone}/probe.safetensors"),
        runs=lambda wc: [r["path"] for r in mechanism_runs(wc)],
        model=model_json,
    output:
        figure=report(
            run_path("analysis/mechanism/{backbone}/positional.png"),
            caption="../workflow/report/positional.rst",
            category=REPORT_SECTIONS["Mechanism"],
            subcategory="Positional attenuation",
            labels={"backbone": "{backbone}"},
        ),
        pdf=run_path("analysis/mechanism/{backbone}/positional.pdf"),
        table=run_path("analysis/mechanism/{backbone}/positional.parquet"),
    log:
        "logs/positional_attenuation/{backbone}.log",
    benchmark:
        "benchmarks/positional_attenuation/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    params:
        runs=mechanism_runs,
        labels=mechanism_labels,
        scales=lambda wc: MECHANISM["scales"],
        out_stem=lambda wildcards, output: os.path.splitext(output.table)[0],
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/positional_attenuation.py"


# Both measures read the same passes of the text encoders (every token, every scale): one job writes both.
rule encoder_measures:
    input:
        runs=lambda wc: [r["path"] for r in mechanism_runs(wc)],
        model=model_json,
    output:
        residual_figure=report(
            run_path("analysis/mechanism/{backbone}/residual.png"),
            caption="../workflow/report/residual.rst",
            category=REPORT_SECTIONS["Mechanism"],
            subcategory="Residual updates",
            labels={"backbone": "{backbone}"},
        ),
        residual_pdf=run_path("analysis/mechanism/{backbone}/residual.pdf"),
        residual_table=run_path("analysis/mechanism/{backbone}/residual.parquet"),
        context_figure=report(
            run_path("analysis/mechanism/{backbone}/context.png"),
            caption="../workflow/report/context.rst",
            category=REPORT_SECTIONS["Mechanism"],
            subcategory="Contextualization",
            labels={"backbone": "{backbone}"},
        ),
        context_pdf=run_path("analysis/mechanism/{backbone}/context.pdf"),
        context_table=run_path("analysis/mechanism/{backbone}/context.parquet"),
    log:
        "logs/encoder_measures/{backbone}.log",
    benchmark:
        "benchmarks/encoder_measures/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    params:
        runs=mechanism_runs,
        labels=mechanism_labels,
        scales=lambda wc: MECHANISM["scales"],
        templates=lambda wc: MECHANISM["prompts"],
        residual_stem=lambda wildcards, output: os.path.splitext(output.residual_table)[0],
        context_stem=lambda wildcards, output: os.path.splitext(output.context_table)[0],
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/encoder_measures.py"


rule semantic_directions:
    input:
        runs=lambda wc: [r["path"] for r in mechanism_runs(wc)],
        model=model_json,
    output:
        figures=direction_reports(),
        pdf=expand(
            run_path("analysis/mechanism/{{backbone}}/directions/{subject}.pdf"),
            subject=list(SUBJECTS),
        ),
        points=run_path("analysis/mechanism/{backbone}/directions/points.parquet"),
        nearest=run_path("analysis/mechanism/{backbone}/directions/nearest.parquet"),
        words=report(
            run_path("analysis/mechanism/{backbone}/directions/nearest.html"),
            caption="../workflow/report/nearest_words.rst",
            category=REPORT_SECTIONS["Mechanism"],
            subcategory="Nearest words",
            labels={"backbone": "{backbone}"},
        ),
    log:
        "logs/semantic_directions/{backbone}.log",
    benchmark:
        "benchmarks/semantic_directions/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    params:
        runs=mechanism_runs,
        labels=mechanism_labels,
        directions=lambda wc: MECHANISM["directions"],
        out_dir=lambda wildcards, output: os.path.dirname(output.points),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/semantic_directions.py"


rule token_decoding:
    input:
        runs=lambda wc: [r["path"] for r in mechanism_runs(wc)],
        model=model_json,
    output:
        table=run_path("analysis/mechanism/{backbone}/decoding.parquet"),
        page=report(
            run_path("analysis/mechanism/{backbone}/decoding.html"),
            caption="../workflow/report/decoding.rst",
            category=REPORT_SECTIONS["Mechanism"],
            subcategory="Decoding",
            labels={"backbone": "{backbone}"},
        ),
    log:
        "logs/token_decoding/{backbone}.log",
    benchmark:
        "benchmarks/token_decoding/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    params:
        runs=mechanism_runs,
        labels=mechanism_labels,
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/token_decoding.py"


rule attention_maps:
    input:
        runs=lambda wc: [r["path"] for r in attention_runs(wc)],
        model=model_json,
    output:
        figure=report(
            run_path("analysis/mechanism/{backbone}/attention.png"),
            caption="../workflow/report/attention.rst",
            category=REPORT_SECTIONS["Mechanism"],
            subcategory="Attention maps",
            labels={"backbone": "{backbone}"},
        ),
        pdf=run_path("analysis/mechanism/{backbone}/attention.pdf"),
        table=run_path("analysis/mechanism/{backbone}/attention.parquet"),
    log:
        "logs/attention_maps/{backbone}.log",
    benchmark:
        "benchmarks/attention_maps/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(60),
    params:
        runs=attention_runs,
        labels=mechanism_labels,
        attention=lambda wc: MECHANISM["attention"],
        sample=sample_settings,
        out_stem=lambda wildcards, output: os.path.splitext(output.table)[0],
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/attention_maps.py"
