# evaluate: accuracy, agreement, explanations, FSS/RS, UniCAM, decision process, efficiency
# of every student of one dataset x pair x seed, against its teacher and the vanilla
# student of the same pair and seed. One job (one process) per dataset x pair x seed: the
# interpreter, the data, the teacher and the vanilla base are loaded once for all its
# methods (a job per student spent most of its time starting up). A method added to the
# profile re-runs its cell's evaluate job, never a training job; the job reuses the kept
# record of every student whose inputs did not change (eval_record.json beside the
# student: kdbench.evaluation.run.record_key), so only the new method is evaluated. Pairs that exclude
# methods (exclude_methods) get a rule of their own (common.smk: evaluate_groups).
for EVAL_RULE, EVAL_METHODS, EVAL_TEACHERS, EVAL_STUDENTS in evaluate_groups():

    rule:
        name:
            EVAL_RULE
        wildcard_constraints:
            teacher=EVAL_TEACHERS,
            student=EVAL_STUDENTS,
        input:
            models=cell_student_files("model.pt"),
            metrics=cell_student_files("metrics.json"),
            teacher=lambda w: teacher_model(w.dataset, w.teacher, w.seed),
        output:
            cell_eval_outputs(EVAL_METHODS),
        params:
            evaluation=lambda w: P["evaluation"],
            methods=JobArg(" ".join(shlex.quote(m) for m in EVAL_METHODS)),
            profile=PROFILE_ARG,
            overrides=SET_ARG,
        log:
            r(layout.LOG_EVAL),
        conda:
            "../../environment.yml"
        threads: THREADS
        resources:
            mem_mb=8000,
            runtime=2 * 60,
        shell:
            # the previous attempt's log is kept as LOG.1
            "{{ [ ! -e {log:q} ] || mv -f {log:q} {log:q}.1; }}; "
            "kdbench evaluate --params {params.profile:q} --dataset {wildcards.dataset:q} --teacher {wildcards.teacher:q} "
            "--student {wildcards.student:q} --method {params.methods} --seed {wildcards.seed}{params.overrides} "
            "> {log:q} 2>&1"
