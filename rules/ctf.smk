# CTF estimation of every micrograph of a chunk (in group "preprocess" with motioncor;
# a CPU stage, about 0.1 s per micrograph) and the curation of all micrographs.


rule ctf:
    input:
        micrographs=f"{MICROGRAPHS}/{{chunk}}",
    output:
        ctf=directory(f"{RESULTS}/ctf/{{chunk}}"),
    log:
        f"{LOGS}/ctf/{{chunk}}.log",
    benchmark:
        f"{BENCHMARKS}/ctf/{{chunk}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=chunk_minutes(2),
    params:
        root=job_root(f"{RESULTS}/ctf/{{chunk}}"),
        options=command_line(ctf_args(config)),
    shell:
        "cryosnake chunk ctf --micrographs {input.micrographs:q} --out-dir {output.ctf:q} "
        "-- {params.options} --names-relative-to {params.root:q} > {log} 2>&1"


rule curate:
    input:
        ctf=per_chunk(f"{RESULTS}/ctf/{{chunk}}"),
        motion=per_chunk(f"{RESULTS}/motioncor/{{chunk}}"),
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
