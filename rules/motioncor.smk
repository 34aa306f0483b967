# Motion correction of every movie inspect accepted (GPU rule; runs on the CPU where
# there is none). It waits for import_movies (movies.star), which decides which movies
# go on; as an ancient() input, a new movies.star (a movie added) redoes no movie. In group "preprocess" with ctf, pick and extract, so a cluster/Batch job
# handles a chunk of movies.
# A GPU rule declares gpu=1 (SLURM, local --resources) and _gpus=1 (the AWS Batch
# executor reads only _gpus). Its threads take a whole job's cores (profiles/aws:
# cores) so that a group job runs one GPU stage at a time and asks for one GPU. Its
# mem_mb stays at or below 28672 (3.5 GiB per thread): the 8-vCPU GPU instances have
# 32 GiB, of which ECS offers the jobs somewhat less than 32768 MiB, and a larger
# request lands on an instance of twice the price.


rule motioncor:
    input:
        movie=movie_path,
        gain=gain_input,
        report=f"{RESULTS}/inspect/{{movie}}.json",
        accepted=ancient(f"{RESULTS}/movies.star"),
    output:
        dose_weighted=f"{RESULTS}/motioncor/{{movie}}.mrc",
        unweighted=f"{RESULTS}/motioncor/{{movie}}_noDW.mrc",
        star=f"{RESULTS}/motioncor/{{movie}}.star",
        plot=f"{RESULTS}/motioncor/{{movie}}_motion.png",
    log:
        f"{LOGS}/motioncor/{{movie}}.log",
    benchmark:
        f"{BENCHMARKS}/motioncor/{{movie}}.tsv"
    group:
        "preprocess"
    container:
        CONTAINER_GPU
    threads: 8
    resources:
        mem_mb=16384,
        runtime=30,
        gpu=1,
        _gpus=1,
    params:
        root=job_root(f"{RESULTS}/motioncor/{{movie}}.mrc"),
        gain=gain_options,
        out_dir=output_dir,
        options=command_line(motioncor_args(config)),
    shell:
        "CRYOSNAKE_THREADS={threads} cryosnake motioncor --movie {input.movie:q} "
        "--out-dir {params.out_dir:q} {params.gain} {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"
