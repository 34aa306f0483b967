# From micrographs to a clean particle set: picking and extraction, one job per chunk
# of micrographs (in group "preprocess" with motioncor and ctf), then the
# particles of the selected micrographs in one particles.star, 2D classification and
# class selection. Stages that write or read file names in STAR files are given the
# job root (--names-relative-to, see job_root in common.smk), so that the names are
# the workflow's own paths.


rule pick:
    input:
        micrographs=f"{MICROGRAPHS}/{{chunk}}",
        ctf=f"{RESULTS}/ctf/{{chunk}}",
        templates=pick_templates,
    output:
        picks=directory(f"{RESULTS}/pick/{{chunk}}"),
    log:
        f"{LOGS}/pick/{{chunk}}.log",
    benchmark:
        f"{BENCHMARKS}/pick/{{chunk}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_GPU
    threads: 8
    resources:
        mem_mb=16384,
        runtime=chunk_minutes(2),
        gpu=1,
        _gpus=1,
    params:
        options=pick_options,
    shell:
        "CRYOSNAKE_THREADS={threads} cryosnake chunk pick "
        "--micrographs {input.micrographs:q} --ctf-dir {input.ctf:q} "
        "--out-dir {output.picks:q} -- {params.options} > {log} 2>&1"


rule extract:
    input:
        micrographs=f"{MICROGRAPHS}/{{chunk}}",
        picks=f"{RESULTS}/pick/{{chunk}}",
        ctf=f"{RESULTS}/ctf/{{chunk}}",
    output:
        particles=directory(f"{RESULTS}/extract/{{chunk}}"),
    log:
        f"{LOGS}/extract/{{chunk}}.log",
    benchmark:
        f"{BENCHMARKS}/extract/{{chunk}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=chunk_minutes(2),
    params:
        root=job_root(f"{RESULTS}/extract/{{chunk}}"),
        options=command_line(extract_args(config)),
    shell:
        "cryosnake chunk extract --micrographs {input.micrographs:q} "
        "--pick-dir {input.picks:q} --ctf-dir {input.ctf:q} "
        "--out-dir {output.particles:q} -- {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"


rule merge_particles:
    input:
        stars=per_chunk(f"{RESULTS}/extract/{{chunk}}"),
        selected=f"{RESULTS}/micrographs_selected.star",
    output:
        star=f"{RESULTS}/particles.star",
    log:
        f"{LOGS}/merge_particles.log",
    benchmark:
        f"{BENCHMARKS}/merge_particles.tsv"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=5,
    shell:
        "cryosnake merge-particles --stars {input.stars:q} "
        "--selected {input.selected:q} --out {output.star:q} > {log} 2>&1"


rule class2d:
    input:
        particles=f"{RESULTS}/particles.star",
        stacks=per_chunk(f"{RESULTS}/extract/{{chunk}}"),
    output:
        data=f"{RESULTS}/class2d/run_data.star",
        classes=f"{RESULTS}/class2d/run_classes.mrcs",
        model=f"{RESULTS}/class2d/run_model.star",
        plot=f"{RESULTS}/class2d/run_classes.png",
    log:
        f"{LOGS}/class2d.log",
    benchmark:
        f"{BENCHMARKS}/class2d.tsv"
    container:
        CONTAINER_GPU
    threads: 8
    resources:
        mem_mb=28672,
        runtime=240,
        gpu=1,
        _gpus=1,
    params:
        root=job_root(f"{RESULTS}/class2d/run_data.star"),
        out_dir=output_dir,
        options=command_line(class2d_args(config, checkpoint_url("class2d"))),
    shell:
        "CRYOSNAKE_THREADS={threads} cryosnake class2d --particles {input.particles:q} "
        "--out-dir {params.out_dir:q} {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"


rule select2d:
    input:
        data=f"{RESULTS}/class2d/run_data.star",
        model=f"{RESULTS}/class2d/run_model.star",
        classes=f"{RESULTS}/class2d/run_classes.mrcs",
    output:
        star=f"{RESULTS}/particles_selected.star",
        plot=f"{RESULTS}/class2d/selection.png",
    log:
        f"{LOGS}/select2d.log",
    benchmark:
        f"{BENCHMARKS}/select2d.tsv"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=5,
    params:
        root=job_root(f"{RESULTS}/particles_selected.star"),
        options=command_line(select2d_args(config)),
    shell:
        "cryosnake select2d --data {input.data:q} --model {input.model:q} "
        "--out {output.star:q} --plot {output.plot:q} {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"
