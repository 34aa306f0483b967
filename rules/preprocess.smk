# Per-movie checks, one job per chunk of movies (CHUNKS, common.smk), and the import of
# all movies into movies.star. A movie that fails its checks (truncated, corrupt, blank
# frames, off dose) is rejected, not an error: its report says why, import_movies lists
# it in movies_rejected.tsv, and the chunk's motioncor job leaves it out.


rule inspect:
    input:
        movies=chunk_movies,
        gain=gain_input,
    output:
        reports=directory(f"{RESULTS}/inspect/{{chunk}}"),
    log:
        f"{LOGS}/inspect/{{chunk}}.log",
    benchmark:
        f"{BENCHMARKS}/inspect/{{chunk}}.tsv"
    container:
        CONTAINER_CPU
    # Single-threaded (movies one after another); 4 threads and 8192 MiB, a (vCPU,
    # MiB) pair that AWS Batch accepts.
    threads: 4
    resources:
        mem_mb=8192,
        runtime=chunk_minutes(2),
    params:
        root=job_root(f"{RESULTS}/inspect/{{chunk}}"),
        gain=gain_options,
        options=command_line(inspect_args(config)),
    shell:
        "cryosnake chunk inspect --movies {input.movies:q} --out-dir {output.reports:q} "
        "-- {params.gain} {params.options} --reject "
        "--names-relative-to {params.root:q} > {log} 2>&1"


rule import_movies:
    input:
        per_chunk(f"{RESULTS}/inspect/{{chunk}}"),
    output:
        star=f"{RESULTS}/movies.star",
        summary=MOVIES_SUMMARY,
        rejected=REJECTED_MOVIES,
    log:
        f"{LOGS}/import_movies.log",
    benchmark:
        f"{BENCHMARKS}/import_movies.tsv"
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=5,
    params:
        optics=command_line(import_args(config)),
    shell:
        "cryosnake import --reports {input:q} {params.optics} "
        "--out {output.star:q} --summary {output.summary:q} "
        "--rejected {output.rejected:q} > {log} 2>&1"
