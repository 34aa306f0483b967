# One self-contained HTML report of the run (cryosnake report), from the files of
# every stage it shows, all declared as inputs (so it also runs as a remote job), and
# the effective configuration.
rule report:
    input:
        report_inputs(),
        per_chunk(*REPORT_PER_CHUNK),
    output:
        html=f"{RESULTS}/report.html",
    log:
        f"{LOGS}/report.log",
    container:
        CONTAINER_CPU
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    params:
        results=output_dir,
        config_text=config_yaml(),
    shell:
        "cfg=$(mktemp) && printf '%s\\n' {params.config_text:q} > $cfg && "
        "cryosnake report --results {params.results:q} --out {output.html:q} "
        "--config $cfg > {log} 2>&1; status=$?; rm -f $cfg; exit $status"
