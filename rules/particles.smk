# From micrographs to a clean particle set: picking and extraction per micrograph (in
# group "preprocess", so a cluster/Batch job handles a chunk of movies), then the
# particles of the selected micrographs in one particles.star, 2D classification and
# class selection. Stages that write file names into STAR files run from the job
# root (see job_root in common.smk), so the names are the workflow's own paths.


rule pick:
    input:
        micrograph=f"{RESULTS}/motioncor/{{movie}}.mrc",
        ctf=f"{RESULTS}/ctf/{{movie}}.star",
        templates=pick_templates,
    output:
        star=f"{RESULTS}/pick/{{movie}}.star",
        plot=f"{RESULTS}/pick/{{movie}}.png",
    log:
        f"{LOGS}/pick/{{movie}}.log",
    benchmark:
        f"{BENCHMARKS}/pick/{{movie}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_GPU
    threads: 8
    resources:
        mem_mb=16384,
        runtime=10,
        gpu=1,
        _gpus=1,
    params:
        pixel_size=ACQ["pixel_size"] * config["motioncor"]["bin"],
        options=pick_options,
    shell:
        "CRYOSNAKE_THREADS={threads} cryosnake pick --micrograph {input.micrograph:q} "
        "--ctf {input.ctf:q} --out {output.star:q} --plot {output.plot:q} "
        "--pixel-size {params.pixel_size} {params.options} > {log} 2>&1"


rule extract:
    input:
        micrograph=f"{RESULTS}/motioncor/{{movie}}.mrc",
        coords=f"{RESULTS}/pick/{{movie}}.star",
        ctf=f"{RESULTS}/ctf/{{movie}}.star",
    output:
        star=f"{RESULTS}/extract/{{movie}}.star",
        stack=f"{RESULTS}/extract/{{movie}}.mrcs",
    log:
        f"{LOGS}/extract/{{movie}}.log",
    benchmark:
        f"{BENCHMARKS}/extract/{{movie}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    params:
        root=job_root(f"{RESULTS}/extract/{{movie}}.star"),
        micrograph=rel("input.micrograph", f"{RESULTS}/extract/{{movie}}.star"),
        coords=rel("input.coords", f"{RESULTS}/extract/{{movie}}.star"),
        ctf=rel("input.ctf", f"{RESULTS}/extract/{{movie}}.star"),
        out_dir=rel_dir("output.star", f"{RESULTS}/extract/{{movie}}.star"),
        pixel_size=ACQ["pixel_size"] * config["motioncor"]["bin"],
        options=extract_options(),
    shell:
        "(cd {params.root:q} && cryosnake extract --micrograph {params.micrograph} "
        "--coords {params.coords} --ctf {params.ctf} --out-dir {params.out_dir} "
        "--pixel-size {params.pixel_size} {params.options}) > {log} 2>&1"


rule merge_particles:
    input:
        stars=per_movie(f"{RESULTS}/extract/{{movie}}.star"),
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
    params:
        root=job_root(f"{RESULTS}/particles.star"),
        stars=rel("input.stars", f"{RESULTS}/particles.star"),
        selected=rel("input.selected", f"{RESULTS}/particles.star"),
        out=rel("output.star", f"{RESULTS}/particles.star"),
    shell:
        "(cd {params.root:q} && cryosnake merge-particles --stars {params.stars} "
        "--selected {params.selected} --out {params.out}) > {log} 2>&1"


rule class2d:
    input:
        particles=f"{RESULTS}/particles.star",
        stacks=per_movie(f"{RESULTS}/extract/{{movie}}.mrcs"),
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
        particles=rel("input.particles", f"{RESULTS}/class2d/run_data.star"),
        out_dir=rel_dir("output.data", f"{RESULTS}/class2d/run_data.star"),
        options=class2d_options(),
    shell:
        "(cd {params.root:q} && CRYOSNAKE_THREADS={threads} cryosnake class2d "
        "--particles {params.particles} --out-dir {params.out_dir} {params.options}) "
        "> {log} 2>&1"


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
        data=rel("input.data", f"{RESULTS}/particles_selected.star"),
        model=rel("input.model", f"{RESULTS}/particles_selected.star"),
        out=rel("output.star", f"{RESULTS}/particles_selected.star"),
        plot=rel("output.plot", f"{RESULTS}/particles_selected.star"),
        options=select2d_options(),
    shell:
        "(cd {params.root:q} && cryosnake select2d --data {params.data} "
        "--model {params.model} --out {params.out} --plot {params.plot} {params.options}) "
        "> {log} 2>&1"
