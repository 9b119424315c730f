# import_teacher: a teacher the profile names under `teachers` (an external checkpoint,
# e.g. RepDistiller's CIFAR-100 teachers: params/teachers/cifar100.yaml) is imported, not
# trained: `kdbench import-teacher` checks the file, measures its test accuracy once and
# writes the same outputs as the teacher rule, so every later job works unchanged.
# The rule only matches those (dataset, arch) outputs (its wildcard is constrained to
# them, EXTERNAL_TEACHERS in common.smk); ruleorder lets it win over `teacher` there. The
# files themselves were checked (exist, sha256, keys and shapes) when the DAG was built
# (common.smk, verify_teachers).
ruleorder: import_teacher > teacher


rule import_teacher:
    input:
        data=lambda w: r(layout.pattern(layout.DATA, dataset=w.dataset_arch.split('/')[0])),
    output:
        model=r(layout.joined(layout.TEACHER_MODEL, "dataset", "arch", "dataset_arch")),
        metrics=r(layout.joined(layout.TEACHER_METRICS, "dataset", "arch", "dataset_arch")),
    wildcard_constraints:
        dataset_arch=EXTERNAL_TEACHER_PATTERN,
    params:
        dataset=lambda w: w.dataset_arch.split("/")[0],
        arch=lambda w: w.dataset_arch.split("/")[1],
        # re-import when the spec (path, pinned hash) or the data options change
        identity=lambda w: rule_identity(P, *w.dataset_arch.split("/")),
        profile=PROFILE_ARG,
        overrides=SET_ARG,
        tracking=TRACKING_ARG,
    log:
        r(layout.joined(layout.LOG_TEACHER, "dataset", "arch", "dataset_arch")),
    conda:
        "../../environment.yml"
    threads: THREADS
    priority: 20
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "kdbench import-teacher --params {params.profile:q} --dataset {params.dataset:q} --arch {params.arch:q} "
        "--seed {wildcards.seed} --tracking {params.tracking}{params.overrides} > {log:q} 2>&1"
