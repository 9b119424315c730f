# teachers: one per dataset x teacher arch x teacher seed (the profile's teacher_train recipe).
# A job resumes from its checkpoint.pt if it was interrupted (the checkpoint is not a
# declared output, so Snakemake keeps it when it re-runs the incomplete job).
rule teacher:
    input:
        # ancient: a rebuilt data.pt (same options) does not re-run finished jobs; the
        # config hash (params) holds the dataset options
        data=ancient(r(layout.DATA)),
    output:
        model=r(layout.TEACHER_MODEL),
        metrics=r(layout.TEACHER_METRICS),
    params:
        kdbench=lambda w, resources: launcher(resources),  # under torchrun when nproc > 1
        # re-run exactly when the run's config (recipe, data options, ...) changes
        config_hash=lambda w: teacher_config(P, w.dataset, w.arch, int(w.seed)).config_hash,
        profile=PROFILE_ARG,
        overrides=SET_ARG,
        tracking=TRACKING_ARG,
    log:
        r(layout.LOG_TEACHER),
    conda:
        "../../environment.yml"
    threads: TEACHER_THREADS * NPROC  # TEACHER_THREADS per process
    # teachers first: each one unblocks every student of its dataset and pair (without
    # this, a teacher scheduled late leaves the other cores idle at the end of the run).
    # Above any sum of students' priorities (10 each) that fits in the teacher's cores:
    # Snakemake picks the ready jobs of the highest summed priority, and at 20 two vanilla
    # students (no teacher) tied with a two-thread teacher and went first
    priority: 100
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        nproc=NPROC,
        gpu=JOB_GPUS,
    shell:
        # the previous attempt's log is kept as LOG.1
        "{{ [ ! -e {log:q} ] || mv -f {log:q} {log:q}.1; }}; {params.kdbench} train-teacher --params {params.profile:q} --dataset {wildcards.dataset:q} "
        "--arch {wildcards.arch:q} --seed {wildcards.seed} --tracking {params.tracking}{params.overrides} > {log:q} 2>&1"
