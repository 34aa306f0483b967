# CTF estimation per micrograph (in group "preprocess" with motioncor; a CPU stage,
# about 0.1 s per micrograph) and the curation of all micrographs.


rule ctf:
    input:
        micrograph=f"{RESULTS}/motioncor/{{movie}}_noDW.mrc",
    output:
        star=f"{RESULTS}/ctf/{{movie}}.star",
        plot=f"{RESULTS}/ctf/{{movie}}.png",
    log:
        f"{LOGS}/ctf/{{movie}}.log",
    benchmark:
        f"{BENCHMARKS}/ctf/{{movie}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    params:
        root=job_root(f"{RESULTS}/ctf/{{movie}}.star"),
        options=command_line(ctf_args(config)),
    shell:
        "cryosnake ctf --micrograph {input.micrograph:q} --out {output.star:q} "
        "--plot {output.plot:q} {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"


rule curate:
    input:
        ctf=per_movie(f"{RESULTS}/ctf/{{movie}}.star"),
        motion=per_movie(f"{RESULTS}/motioncor/{{movie}}.star"),
        rejected_movies=REJECTED_MOVIES,
    output:
        all=f"{RESULTS}/micrographs_ctf.star",
        selected=f"{RESULTS}/micrographs_selected.star",
        rejected=f"{RESULTS}/rejected.tsv",
    log:
        f"{LOGS}/curate.log",
    benchmark:
        f"{BENCHMARKS}/curate.tsv"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=5,
    params:
        root=job_root(f"{RESULTS}/micrographs_ctf.star"),
        out_dir=output_dir,
        options=command_line(curate_args(config)),
    shell:
        "cryosnake curate --ctf {input.ctf:q} --motion {input.motion:q} "
        "--rejected-movies {input.rejected_movies:q} --out-dir {params.out_dir:q} "
        "{params.options} --names-relative-to {params.root:q} > {log} 2>&1"
