# tuning (only when the profile has tuning: {trials, seeds}; see kdbench/tuning.py): per
# dataset x pair x method with hyperparameters (not vanilla), `trials` candidates x the
# tuning seeds, each a student trained and scored on the validation split only (its
# dataset has no test split); the selection picks the best mean validation accuracy
# (ties: the lowest trial; trial 0 = the paper values) and the distill jobs of that cell
# use it. `snakemake ... tune` runs only these jobs and writes results/tuning/tuned.yaml
# (all selections with their provenance: what params/tuned/*.yaml holds).
rule tune_trial:
    input:
        data=ancient(r(layout.DATA)),  # as the distill rule
        teacher=trial_teacher,
    output:
        metrics=r(layout.TRIAL_METRICS),
    params:
        kdbench=lambda w, resources: launcher(resources),  # under torchrun when nproc > 1
        config_hash=trial_key,
        profile=PROFILE_ARG,
        overrides=SET_ARG,
    log:
        r(layout.LOG_TRIAL),
    conda:
        "../../environment.yml"
    threads: THREADS * NPROC  # THREADS per process
    # after the teachers, before the distill jobs (which wait for their cell's selection)
    priority: 15
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        nproc=NPROC,
        gpu=JOB_GPUS,
    shell:
        "{params.kdbench} tune-trial --params {params.profile:q} --dataset {wildcards.dataset:q} "
        "--teacher {wildcards.teacher:q} --student {wildcards.student:q} --method {wildcards.method:q} "
        "--trial {wildcards.trial} --seed {wildcards.seed}{params.overrides} > {log:q} 2>&1"


rule tune_select:
    input:
        trials=cell_trials,
    output:
        selection=r(layout.SELECTION),
    params:
        profile=PROFILE_ARG,
        overrides=SET_ARG,
    log:
        r(layout.LOG_SELECTION),
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "kdbench tune-select --params {params.profile:q} --dataset {wildcards.dataset:q} "
        "--teacher {wildcards.teacher:q} --student {wildcards.student:q} --method {wildcards.method:q}"
        "{params.overrides} > {log:q} 2>&1"


rule tune_export:
    input:
        selections=all_selections(),
    output:
        TUNING_EXPORT,
    params:
        profile=PROFILE_ARG,
        overrides=SET_ARG,
    log:
        r(layout.LOG_EXPORT),
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "kdbench tune-export --params {params.profile:q} --out {output:q}{params.overrides} > {log:q} 2>&1"


localrules:
    tune_select,
    tune_export,
    tune,


rule tune:
    input:
        rules.tune_export.output,
