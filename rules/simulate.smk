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
            options=command_line(simulate_args(config)),
        shell:
            "cryosnake simulate --out-dir {params.out_dir:q} {params.options} > {log} 2>&1"
