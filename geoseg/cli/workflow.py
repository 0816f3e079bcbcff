"""``geoseg workflow render``: Slurm job scripts and Kubernetes manifests filled from a config."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from geoseg.cli.render import console


@click.group()
def workflow() -> None:
    """Cluster job definitions (Slurm, Kubernetes) for `geoseg run`."""


@workflow.command()
@click.argument("kind", type=click.Choice(["slurm", "k8s"]))
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config: cluster.slurm / cluster.kubernetes and cluster.job fill the "
                   "templates; the jobs run geoseg with it.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the files into [print them].")
@click.option("--overwrite", is_flag=True,
              help="Replace files of the same names in --out [refuse].")
def render(kind: str, config_path: Path, out: Path | None, overwrite: bool) -> None:
    """Render the KIND job files from a config.

    \b
    slurm: NAME-array.sbatch (a job array, one --split per task, each task a local cluster)
           NAME-driver.sbatch (one job running `geoseg run --cluster slurm`: workers are jobs)
    k8s:   NAME-dask.yaml (scheduler, GPU worker Deployment, driver Job, config ConfigMap)
           NAME-indexed-job.yaml (an Indexed Job, one --split per pod)

    Files stay inside --out; existing ones are kept unless --overwrite is given.

    \b
    Examples:
      geoseg workflow render slurm -c configs/slurm.yaml -o jobs/ && sbatch jobs/geoseg-array.sbatch
      geoseg workflow render k8s -c configs/k8s.yaml -o k8s/
      kubectl apply -f k8s/geoseg-dask.yaml
    """
    from geoseg.config import load_config, read_config_text
    from geoseg.workflows import render_workflow, write_workflow

    cfg = load_config(config_path)
    files = render_workflow(kind, cfg, config_path, read_config_text(config_path))
    if out is None:
        for name, text in files.items():
            click.echo(f"# ==> {name} <==")
            click.echo(text, nl=False)
        return
    for path in write_workflow(files, out, overwrite=overwrite):
        console.print(f"[green]wrote[/] {escape(str(path))}")
