# From the selected particles to a map: ab initio model (or the map named by
# initial3d.reference), optional 3D classification, gold-standard refinement and
# post-processing. Switched off by map3d: false (e.g. for data sets too small for 3D).


rule initial3d:
    input:
        particles=f"{RESULTS}/particles_selected.star",
        stacks=per_chunk(f"{RESULTS}/extract/{{chunk}}"),
    output:
        model=f"{RESULTS}/initial3d/initial_model.mrc",
        plot=f"{RESULTS}/initial3d/initial_model.png",
        data=f"{RESULTS}/initial3d/initial_model_data.star",
    log:
        f"{LOGS}/initial3d.log",
    benchmark:
        f"{BENCHMARKS}/initial3d.tsv"
    container:
        CONTAINER_GPU
    threads: 8
    resources:
        mem_mb=28672,
        runtime=240,
        gpu=1,
        _gpus=1,
    params:
        root=job_root(f"{RESULTS}/initial3d/initial_model.mrc"),
        out_dir=output_dir,
        options=command_line(initial3d_args(config, checkpoint_url("initial3d"))),
    shell:
        "CRYOSNAKE_THREADS={threads} cryosnake initial3d --particles {input.particles:q} "
        "--out-dir {params.out_dir:q} {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"


# Optional (class3d.classes > 0): 3D classification of the selected particles from
# the same starting map; refine3d then refines the particles of the kept classes.
if class3d_on():

    rule class3d:
        input:
            particles=f"{RESULTS}/particles_selected.star",
            stacks=per_chunk(f"{RESULTS}/extract/{{chunk}}"),
            reference=refine3d_reference(),
        output:
            model=f"{RESULTS}/class3d/run_model.star",
            data=f"{RESULTS}/class3d/run_data.star",
            kept=f"{RESULTS}/class3d/particles_kept.star",
            plot=f"{RESULTS}/class3d/run_classes.png",
        log:
            f"{LOGS}/class3d.log",
        benchmark:
            f"{BENCHMARKS}/class3d.tsv"
        container:
            CONTAINER_GPU
        threads: 8
        resources:
            mem_mb=28672,
            runtime=720,
            gpu=1,
            _gpus=1,
        params:
            root=job_root(f"{RESULTS}/class3d/run_model.star"),
            out_dir=output_dir,
            options=command_line(class3d_args(config, checkpoint_url("class3d"))),
        shell:
            "CRYOSNAKE_THREADS={threads} cryosnake class3d --particles {input.particles:q} "
            "--reference {input.reference:q} --out-dir {params.out_dir:q} {params.options} "
            "--names-relative-to {params.root:q} > {log} 2>&1"


rule refine3d:
    input:
        particles=refine3d_particles(),
        stacks=per_chunk(f"{RESULTS}/extract/{{chunk}}"),
        reference=refine3d_reference(),
    output:
        full=f"{RESULTS}/refine3d/run_class001.mrc",
        half1=f"{RESULTS}/refine3d/run_half1_class001_unfil.mrc",
        half2=f"{RESULTS}/refine3d/run_half2_class001_unfil.mrc",
        fsc=f"{RESULTS}/refine3d/fsc.star",
        data=f"{RESULTS}/refine3d/run_data.star",
        plot=f"{RESULTS}/refine3d/run_angdist.png",
    log:
        f"{LOGS}/refine3d.log",
    benchmark:
        f"{BENCHMARKS}/refine3d.tsv"
    container:
        CONTAINER_GPU
    threads: 8
    resources:
        mem_mb=28672,
        runtime=720,
        gpu=1,
        _gpus=1,
    params:
        root=job_root(f"{RESULTS}/refine3d/run_class001.mrc"),
        out_dir=output_dir,
        options=command_line(refine3d_args(config, checkpoint_url("refine3d"))),
    shell:
        "CRYOSNAKE_THREADS={threads} cryosnake refine3d --particles {input.particles:q} "
        "--reference {input.reference:q} --out-dir {params.out_dir:q} {params.options} "
        "--names-relative-to {params.root:q} > {log} 2>&1"


rule postprocess:
    input:
        half1=f"{RESULTS}/refine3d/run_half1_class001_unfil.mrc",
        half2=f"{RESULTS}/refine3d/run_half2_class001_unfil.mrc",
    output:
        map=f"{RESULTS}/postprocess/postprocess.mrc",
        masked=f"{RESULTS}/postprocess/postprocess_masked.mrc",
        mask=f"{RESULTS}/postprocess/postprocess_mask.mrc",
        star=f"{RESULTS}/postprocess/postprocess.star",
        fsc=f"{RESULTS}/postprocess/postprocess_fsc.png",
        guinier=f"{RESULTS}/postprocess/postprocess_guinier.png",
        slices=f"{RESULTS}/postprocess/postprocess_slices.png",
    log:
        f"{LOGS}/postprocess.log",
    benchmark:
        f"{BENCHMARKS}/postprocess.tsv"
    container:
        CONTAINER_CPU
    threads: 2
    resources:
        mem_mb=8192,
        runtime=30,
    params:
        out_dir=output_dir,
        options=command_line(postprocess_args(config)),
    shell:
        "cryosnake postprocess --half1 {input.half1:q} --half2 {input.half2:q} "
        "--out-dir {params.out_dir:q} {params.options} > {log} 2>&1"
