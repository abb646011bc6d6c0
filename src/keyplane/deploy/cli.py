"""``keyplane deploy ...``: render Kubernetes manifests; lay out a pod's credentials.

Mounted in the main CLI as ``keyplane deploy``. Exit codes: 0 success, 1 a file could not
be read or written, 2 bad input (topology, options, a certificate lacking a Service name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

__all__ = ["app"]

app = typer.Typer(name="deploy", no_args_is_help=True, add_completion=False,
                  help="Deploy the distributed mode: Kubernetes manifests from a topology.")
console = Console(stderr=True)


@app.command()
def kubernetes(
        topology: Annotated[Path, typer.Option("--topology", "-t", help="Topology YAML file.")],
        certs: Annotated[Path, typer.Option(
            "--certs", help="Certificates folder (keyplane certs layout; missing ones are "
                            "issued with the Services' DNS names). Keep it, and ca.key, "
                            "off the cluster.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
        image: Annotated[str, typer.Option(help="The keyplane image (deploy/Dockerfile).")],
        namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "keyplane",
        storage_class: Annotated[str | None, typer.Option(
            "--storage-class", help="StorageClass of PostgreSQL's volume (default: the "
                                    "cluster's).")] = None,
        postgres_storage: Annotated[str, typer.Option(
            "--postgres-storage", help="Size of PostgreSQL's volume.")] = "1Gi",
) -> None:
    """Render the manifests of a topology's distributed mode (Kustomize-ready folder)."""
    from keyplane.config import load_topology
    from keyplane.deploy.kubernetes import KubernetesOptions, render, write_manifests
    from keyplane.errors import ConfigError

    try:
        topo = load_topology(topology)
        opts = KubernetesOptions(image=image, namespace=namespace,
                                 storage_class=storage_class,
                                 postgres_storage=postgres_storage)
        manifests = render(topo, certs, opts)
    except (ConfigError, ValidationError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        written = write_manifests(manifests, out)
    except OSError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"wrote {len(written)} files to {out} ({len(manifests.documents())} "
                  f"documents; secrets.yaml holds private keys: never commit it). Apply with "
                  f"kubectl apply -k {out}", highlight=False)


@app.command("install-credentials")
def install_credentials_cmd(
        source: Annotated[Path, typer.Option("--from", help="The mounted Secret.")],
        target: Annotated[Path, typer.Option("--to", help="The state folder's certs/.")],
) -> None:
    """Copy a mounted Secret into owner-only files (a keyplane pod's init container)."""
    from keyplane.deploy.credentials import install_credentials

    try:
        files = install_credentials(source, target)
    except OSError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"installed {len(files)} files under {target}", highlight=False)
