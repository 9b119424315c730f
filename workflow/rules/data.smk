# data: build each dataset once and store its tensors (results/data/{dataset}/data.pt);
# every training/evaluation job then loads them instead of regenerating them.
rule data:
    output:
        data=r(layout.DATA),
        meta=r(layout.DATA_META),
    params:
        # the dataset's options: changing them rebuilds the data (and, through the config hash, what follows)
        options=lambda w: P["datasets"][w.dataset],
        profile=PROFILE_ARG,
        overrides=SET_ARG,
    log:
        r(layout.LOG_DATA),
    conda:
        "../../environment.yml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        # the previous attempt's log is kept as LOG.1
        "{{ [ ! -e {log:q} ] || mv -f {log:q} {log:q}.1; }}; kdbench prepare-data --params {params.profile:q} --dataset {wildcards.dataset:q}{params.overrides} > {log:q} 2>&1"
