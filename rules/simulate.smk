# A simulated dataset with ground truth as the input (config: simulate).


if SIM["enabled"]:

    rule simulate:
        output:
            **simulated_outputs(),
        log:
            f"{LOGS}/simulate.log",
        benchmark:
            f"{BENCHMARKS}/simulate.tsv"
        container:
            CONTAINER_CPU
        threads: 2
        resources:
            mem_mb=4096,
            runtime=60,
        params:
            out_dir=simulate_out_dir,
            preset=SIM["preset"],
            seed=SIM["seed"],
            n_movies=SIM["n_movies"],
            format=SIM["format"],
            acquisition=(
                f"--pixel-size {ACQ['pixel_size']} --voltage {ACQ['voltage']} "
                f"--cs {ACQ['cs']} --amplitude-contrast {ACQ['amplitude_contrast']} "
                f"--dose-per-frame {ACQ['dose_per_frame']}"
            ),
        shell:
            "cryosnake simulate --preset {params.preset} --out-dir {params.out_dir} "
            "--seed {params.seed} --n-movies {params.n_movies} --format {params.format} "
            "{params.acquisition} > {log} 2>&1"
