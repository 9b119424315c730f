# leaderboard: every evaluated run of the profile -> results/leaderboard/ (tables, figures,
# claims, metrics.json for DVC), logged to MLflow as one run.
rule leaderboard:
    input:
        evals=board_evals(),
        students=board_students(),
        teachers=board_teachers(),
        # published numbers shown beside ours (kdbench leaderboard --published, default params/published)
        published=published_files(),
    output:
        runs=board_file("runs.csv"),
        board=board_file("leaderboard.csv"),
        md=board_file("leaderboard.md"),
        tex=board_file("leaderboard.tex"),
        html=board_file("leaderboard.html"),
        metrics=board_file("metrics.json"),
        claims=board_file("claims.csv"),
        claims_md=board_file("claims.md"),
        fig_accuracy=board_file("accuracy.png"),
        fig_agreement=board_file("accuracy_vs_agreement.png"),
        fig_ood=board_file("ood_vs_id.png"),
        # the overall view across cells (kdbench.board.overall) and the compact paper table
        overall=board_file("overall.csv"),
        profile=board_file("performance_profile.csv"),
        fig_profile=board_file("performance_profile.png"),
        paper_tex=board_file("leaderboard_paper.tex"),
    params:
        profile=PROFILE_ARG,
        overrides=SET_ARG,
    log:
        r(layout.LOG_BOARD),
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "kdbench leaderboard --strict --params {params.profile:q}{params.overrides} > {log:q} 2>&1"
