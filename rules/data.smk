# Subject photos: synthetic ones are generated, DreamBooth is verified or downloaded at its pinned
# commit (on the login node: a local rule), then every subject is normalized into resources/subjects/.
localrules:
    synthesize_subject,
    fetch_dreambooth,
    fetch_dti_prompts,


rule synthesize_subject:
    output:
        expand("resources/raw/{{subject}}/{i:02d}.png", i=range(config["synthetic"]["n_images"])),
    log:
        "logs/synthesize_subject/{subject}.log",
    benchmark:
        "benchmarks/synthesize_subject/{subject}.tsv"
    conda:
        DTI_ENV
    params:
        kind=lambda wc: SUBJECTS[wc.subject]["kind"],
        size=config["synthetic"]["size"],
        seed=config["synthetic"]["seed"],
    script:
        "../workflow/scripts/synthesize_subject.py"


rule fetch_dreambooth:
    output:
        marker="resources/dreambooth.json",
        files=[] if config["data"].get("dreambooth") else dreambooth_files_all(),
    log:
        "logs/fetch_dreambooth.log",
    benchmark:
        "benchmarks/fetch_dreambooth.tsv"
    conda:
        DTI_ENV
    params:
        source=config["data"].get("dreambooth"),
        dest=lambda wildcards, output: os.path.splitext(output.marker)[0],
    script:
        "../workflow/scripts/fetch_dreambooth.py"


# The DTI authors' prompt lists (their prompts.py at a pinned commit, checksummed, read as data).
rule fetch_dti_prompts:
    output:
        "resources/dti_prompts.json",
    log:
        "logs/fetch_dti_prompts.log",
    benchmark:
        "benchmarks/fetch_dti_prompts.tsv"
    conda:
        DTI_ENV
    params:
        source=config["data"].get("dti_prompts"),
    script:
        "../workflow/scripts/fetch_dti_prompts.py"


rule prepare_subject:
    input:
        images=raw_images,
        dataset=dataset_marker,
    output:
        "resources/subjects/{subject}/subject.json",
    log:
        "logs/prepare_subject/{subject}.log",
    benchmark:
        "benchmarks/prepare_subject/{subject}.tsv"
    conda:
        DTI_ENV
    params:
        class_noun=lambda wc: SUBJECTS[wc.subject]["class"],
        kind=lambda wc: SUBJECTS[wc.subject]["kind"],
        initializer=lambda wc: SUBJECTS[wc.subject]["initializer"],
        source=lambda wc: SUBJECTS[wc.subject]["source"],
    script:
        "../workflow/scripts/prepare_subject.py"
