# Motion correction of the movies inspect accepted, one job per chunk (GPU rule; runs
# on the CPU where there is none): the sums go to MICROGRAPHS/<chunk>/, the motion STAR
# files and plots (small: what curate and the report read) to motioncor/<chunk>/.
# motioncor, ctf, pick and extract form the group "preprocess": on a cluster or AWS
# Batch, one job processes a chunk through all four, on one GPU instance, without
# moving its micrographs in between.
# A GPU rule declares gpu=1 (SLURM, local --resources) and _gpus=1 (the AWS Batch
# executor reads only _gpus). Its threads take a whole job's cores (profiles/aws:
# cores) so that a group job runs one GPU stage at a time and asks for one GPU. Its
# mem_mb stays at or below 28672 (3.5 GiB per thread): the 8-vCPU GPU instances have
# 32 GiB, of which ECS offers the jobs somewhat less than 32768 MiB, and a larger
# request lands on an instance of twice the price.


rule motioncor:
    input:
        movies=chunk_movies,
        gain=gain_input,
        reports=f"{RESULTS}/inspect/{{chunk}}",
    output:
        micrographs=directory(f"{MICROGRAPHS}/{{chunk}}"),
        motion=directory(f"{RESULTS}/motioncor/{{chunk}}"),
    log:
        f"{LOGS}/motioncor/{{chunk}}.log",
    benchmark:
        f"{BENCHMARKS}/motioncor/{{chunk}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_GPU
    threads: 8
    resources:
        mem_mb=16384,
        runtime=chunk_minutes(10),
        gpu=1,
        _gpus=1,
    params:
        root=job_root(f"{MICROGRAPHS}/{{chunk}}"),
        gain=gain_options,
        options=command_line(motioncor_args(config)),
    shell:
        "CRYOSNAKE_THREADS={threads} cryosnake chunk motioncor --movies {input.movies:q} "
        "--inspect-dir {input.reports:q} --micrographs {output.micrographs:q} "
        "--out-dir {output.motion:q} -- {params.gain} {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"
