# Per-movie checks (group "inspect": one cluster/Batch job handles a chunk of movies)
# and the import of all movies into movies.star. A movie that fails its checks
# (truncated, corrupt, blank frames, off dose) is rejected, not an error: import_movies
# lists it in movies_rejected.tsv, and as a checkpoint it lets Snakemake plan the
# per-movie stages (per_movie in common.smk) for the accepted movies only.


rule inspect:
    input:
        movie=movie_path,
        gain=gain_input,
    output:
        report=f"{RESULTS}/inspect/{{movie}}.json",
        thumbnail=f"{RESULTS}/inspect/{{movie}}.png",
    log:
        f"{LOGS}/inspect/{{movie}}.log",
    benchmark:
        f"{BENCHMARKS}/inspect/{{movie}}.tsv"
    group:
        "inspect"
    container:
        CONTAINER_CPU
    # Single-threaded; 4 threads and 8192 MiB so that a group job of any number of
    # movies asks AWS Batch for a (vCPU, MiB) pair it accepts: one movie (4, 8192),
    # more two at a time on 8 cores (8, 16384).
    threads: 4
    resources:
        mem_mb=8192,
        runtime=10,
    params:
        root=job_root(f"{RESULTS}/inspect/{{movie}}.json"),
        gain=gain_options,
        options=command_line(inspect_args(config)),
    shell:
        "cryosnake inspect --movie {input.movie:q} {params.gain} {params.options} "
        "--reject --out {output.report:q} --thumbnail {output.thumbnail:q} "
        "--names-relative-to {params.root:q} > {log} 2>&1"


checkpoint import_movies:
    input:
        inspect_reports,
    output:
        star=f"{RESULTS}/movies.star",
        summary=f"{RESULTS}/movies_summary.tsv",
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
