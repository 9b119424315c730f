# distill: one student per dataset x pair x method x seed. Method "vanilla" is the student
# trained alone (the baseline and UniCAM's base model): it needs no teacher. When the
# profile tunes (tuning:), a run's hyperparameters are its cell's selection
# (rules/tuning.smk), read by the job when it runs.
rule distill:
    input:
        # ancient: a rebuilt data.pt (same options) does not re-run finished jobs; the
        # config hash (params) holds the dataset options
        data=ancient(r(layout.DATA)),
        teacher=distill_teacher,
        selection=distill_selection,
    output:
        model=r(layout.STUDENT_MODEL),
        metrics=r(layout.STUDENT_METRICS),
    params:
        kdbench=lambda w, resources: launcher(resources),  # under torchrun when nproc > 1
        # recipe + the method's hyperparameters (params/methods/<method>.yaml, or the tuning
        # selection): editing them re-runs exactly the affected jobs; adding a method to the
        # profile runs only its jobs
        config_hash=distill_key,
        profile=PROFILE_ARG,
        overrides=SET_ARG,
        tracking=TRACKING_ARG,
    log:
        r(layout.LOG_STUDENT),
    conda:
        "../../environment.yml"
    threads: THREADS * NPROC  # THREADS per process
    # before the short evaluate jobs, which then fill the cores at the end of the run
    priority: 10
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        nproc=NPROC,
        gpu=JOB_GPUS,
    shell:
        # the previous attempt's log is kept as LOG.1
        "{{ [ ! -e {log:q} ] || mv -f {log:q} {log:q}.1; }}; "
        "{params.kdbench} distill --params {params.profile:q} --dataset {wildcards.dataset:q} "
        "--teacher {wildcards.teacher:q} --student {wildcards.student:q} --method {wildcards.method:q} "
        "--seed {wildcards.seed} --tracking {params.tracking}{params.overrides} > {log:q} 2>&1"
