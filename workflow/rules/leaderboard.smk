# leaderboard: every evaluated run of the profile -> results/leaderboard/ (tables, figures,
# claims, metrics.json for DVC), logged to MLflow as one run.


def board_runs():
    """(dataset, teacher, student, method, seed) of every student run of the profile."""
    return [(d, t, s, m, seed) for d in DATASETS for t, s in PAIRS for m in METHODS for seed in SEEDS]


BOARD = r("leaderboard")


rule leaderboard:
    input:
        evals=[r(f"evals/{d}/{t}__{s}/{m}/s{seed}.json") for d, t, s, m, seed in board_runs()],
        students=[str(run_paths(R, "student", d, s, seed, teacher=t, method=m) / "metrics.json")
                  for d, t, s, m, seed in board_runs()],
        teachers=sorted({str(run_paths(R, "teacher", d, t, teacher_seed(seed)) / "metrics.json")
                         for d, t, s, m, seed in board_runs()}),
        # published numbers shown beside ours (kdbench leaderboard --published, default params/published)
        published=[f"params/published/{d}.yaml" for d in DATASETS if os.path.exists(f"params/published/{d}.yaml")],
    output:
        runs=f"{BOARD}/runs.csv",
        board=f"{BOARD}/leaderboard.csv",
        md=f"{BOARD}/leaderboard.md",
        tex=f"{BOARD}/leaderboard.tex",
        html=f"{BOARD}/leaderboard.html",
        metrics=f"{BOARD}/metrics.json",
        claims=f"{BOARD}/claims.csv",
        claims_md=f"{BOARD}/claims.md",
        fig_accuracy=f"{BOARD}/accuracy.png",
        fig_agreement=f"{BOARD}/accuracy_vs_agreement.png",
        fig_ood=f"{BOARD}/ood_vs_id.png",
    log:
        r("logs/leaderboard.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "kdbench leaderboard --params {PARAMS:q}{SET} > {log:q} 2>&1"
