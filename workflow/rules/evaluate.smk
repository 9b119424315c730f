# evaluate: accuracy, agreement, explanations, FSS/RS, UniCAM, decision process, efficiency
# of one student, against its teacher and the vanilla student of the same pair and seed.
# (The teacher is an input for every method, vanilla too: agreement and explanation
# similarity are measured against the pair's teacher on every row.)


def student_dir(w, method=None):
    return run_paths(R, "student", w.dataset, w.student, int(w.seed), teacher=w.teacher,
                     method=method or w.method)


rule evaluate:
    input:
        model=lambda w: str(student_dir(w) / "model.pt"),
        metrics=lambda w: str(student_dir(w) / "metrics.json"),
        teacher=lambda w: str(run_paths(R, "teacher", w.dataset, w.teacher, teacher_seed(w.seed)) / "model.pt"),
        base=lambda w: str(student_dir(w, "vanilla") / "model.pt"),
    output:
        r("evals/{dataset}/{teacher}__{student}/{method}/s{seed}.json"),
    params:
        evaluation=lambda w: P["evaluation"],
    log:
        r("logs/evals/{dataset}/{teacher}__{student}/{method}/s{seed}.log"),
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=2 * 60,
    shell:
        # the previous attempt's log is kept as LOG.1
        "{{ [ ! -e {log:q} ] || mv -f {log:q} {log:q}.1; }}; kdbench evaluate --params {PARAMS:q} --dataset {wildcards.dataset:q} --teacher {wildcards.teacher:q} "
        "--student {wildcards.student:q} --method {wildcards.method:q} --seed {wildcards.seed}{SET} > {log:q} 2>&1"
