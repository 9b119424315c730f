# evaluate: accuracy, agreement, explanations, FSS/RS, UniCAM, decision process, efficiency
# of one student, against its teacher and the vanilla student of the same pair and seed.
# (The teacher is an input for every method, vanilla too: agreement and explanation
# similarity are measured against the pair's teacher on every row.)
rule evaluate:
    input:
        model=student_file("model.pt"),
        metrics=student_file("metrics.json"),
        teacher=lambda w: teacher_model(w.dataset, w.teacher, w.seed),
        base=student_file("model.pt", "vanilla"),
    output:
        r("evals/{dataset}/{teacher}__{student}/{method}/s{seed}.json"),
    params:
        evaluation=lambda w: P["evaluation"],
        profile=PROFILE_ARG,
        overrides=SET_ARG,
    log:
        r("logs/evals/{dataset}/{teacher}__{student}/{method}/s{seed}.log"),
    conda:
        "../../environment.yml"
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=2 * 60,
    shell:
        "kdbench evaluate --params {params.profile:q} --dataset {wildcards.dataset:q} --teacher {wildcards.teacher:q} "
        "--student {wildcards.student:q} --method {wildcards.method:q} --seed {wildcards.seed}{params.overrides} "
        "> {log:q} 2>&1"
