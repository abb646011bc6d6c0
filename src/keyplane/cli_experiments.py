"""The ``keyplane`` commands that run an experiment and write its outputs into a folder.

``demo`` runs the paper's proof of concept and renders its Fig. 4 timeline; ``sweep`` measures
the secret key rate against distance. They live apart from the network's process commands in
``keyplane.cli`` (which registers them), as both only read a topology and write files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from keyplane.cli_support import (
    LogFormatOpt,
    TopologyOpt,
    VerboseOpt,
    _check_km_settings,
    _load,
    _logging,
    console,
)
from keyplane.errors import KeyplaneError
from keyplane.fileperms import ensure_private_dir
from keyplane.heap import importing

__all__ = ["demo", "sweep"]

def demo(out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")
                        ] = Path("demo-out"),
         topology: TopologyOpt = Path("examples/paper_poc.yaml"),
         protocol: Annotated[str | None, typer.Option(
             help="Override every link's protocol: bb84-decoy or analytic.")] = None,
         length_km: Annotated[float | None, typer.Option(
             "--length-km", help="Override every link's length.")] = None,
         keys: Annotated[int, typer.Option(help="Keys each pair fetches.")] = 8,
         eve: Annotated[str | None, typer.Option(
             help="Put a full intercept-resend eavesdropper on this link id during the run "
                  "(e.g. km4-km5): the QBER alarm and the reroute or refusal show up.")] = None,
         eve_after_s: Annotated[float, typer.Option(
             help="--eve: seconds after every pair has its first key.")] = 1.0,
         distributed: Annotated[bool, typer.Option(
             "--distributed", help="One process per element over NATS and PostgreSQL.")] = False,
         nats: Annotated[str | None, typer.Option(
             help="--distributed: use this NATS URL instead of starting a server.")] = None,
         db: Annotated[str | None, typer.Option(
             help="--distributed: use this database URL instead of starting PostgreSQL.")
         ] = None,
         kill_km: Annotated[str | None, typer.Option(
             help="--distributed: SIGKILL this node's process mid-run (--kill-after-s after "
                  "every pair has its first key), then restart it.")
         ] = None,
         kill_after_s: Annotated[float, typer.Option(
             help="--kill-km: seconds after every pair has its first key.")] = 2.0,
         danger_insecure_bus: Annotated[bool, typer.Option(
             "--danger-insecure-bus",
             help="--distributed: DANGER: a plain nats-server, no TLS, no client "
                  "certificates, no signatures (logs a WARNING).")] = False,
         seed: Annotated[int, typer.Option(
             help="Seed of the emulated links' randomness (summary.json records it).")] = 1,
         live: Annotated[bool, typer.Option(help="Live rich view while running.")] = True,
         force: Annotated[bool, typer.Option(
             "--force", help="Write into a non-empty --out, replacing the previous demo's "
                             "outputs there (other files are left alone).")] = False,
         verbose: VerboseOpt = False, log_format: LogFormatOpt = "text") -> None:
    """Run the paper's proof of concept end to end and render its Fig. 4 timeline into --out
    (a new or empty folder; --force to reuse one)."""
    with importing():  # the demo's whole stack, with the collector paused
        from keyplane.demo.run import (
            DemoOptions,
            apply_overrides,
            demo_problems,
            run_embedded_demo,
        )

    if protocol is not None and protocol not in ("bb84-decoy", "analytic"):
        console.print("[red]error:[/red] --protocol must be bb84-decoy or analytic, "
                      f"not {protocol!r}")
        raise typer.Exit(2)
    topo = _load(topology)
    try:
        topo = apply_overrides(topo, protocol=protocol, length_km=length_km)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if eve is not None and eve not in {link.link_id for link in topo.links}:
        console.print(f"[red]error:[/red] --eve: no link {eve!r} in {topology} "
                      f"(links: {', '.join(link.link_id for link in topo.links)})")
        raise typer.Exit(2)
    if kill_km is not None and kill_km not in {n.id for n in topo.nodes}:
        console.print(f"[red]error:[/red] --kill-km: no node {kill_km!r}")
        raise typer.Exit(2)
    if (kill_km or nats or db or danger_insecure_bus) and not distributed:
        console.print("[red]error:[/red] --kill-km, --nats, --db and --danger-insecure-bus "
                      "need --distributed")
        raise typer.Exit(2)
    if eve is not None and distributed:
        console.print("[red]error:[/red] --eve runs in the embedded demo; with --distributed "
                      "use 'keyplane link eve LINK --bus URL' against the running network")
        raise typer.Exit(2)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        what = "is not a folder" if not out.is_dir() else "is not empty (an earlier run?)"
        console.print(f"[red]error:[/red] --out {out} {what}: choose another --out"
                      + ("" if not out.is_dir() else ", or --force to replace its demo outputs"))
        raise typer.Exit(2)
    _check_km_settings()
    _logging(verbose, log_format)
    opts = DemoOptions(topology=topo, out=out, keys=keys, eve_link=eve, eve_after_s=eve_after_s,
                       seed=seed, live=live)
    out_console = Console()
    try:
        if distributed:
            from keyplane.demo.distributed import DistributedOptions, run_distributed_demo

            summary = asyncio.run(run_distributed_demo(
                opts, DistributedOptions.from_env(
                    nats_url=nats, db_url=db, kill_km=kill_km, kill_after_s=kill_after_s,
                    danger_insecure_bus=danger_insecure_bus), out_console))
        else:
            summary = asyncio.run(run_embedded_demo(opts, out_console))
    except KeyplaneError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    for s in summary["sessions"]:
        colour = "green" if s["all_keys_matched"] else "red"
        first = s["time_to_first_key_s"]
        out_console.print(
            f"[{colour}]{s['pair']}[/{colour}] path {' -> '.join(s['path'] or ['-'])}: "
            f"{s['keys_matched']}/{s['keys_delivered']} keys identical at both ends, "
            f"first key after {first:.3f} s" if first is not None else
            f"[{colour}]{s['pair']}[/{colour}] {s['status']} {s['error']}")
    out_console.print(f"events: {out / 'events.jsonl'}  timeline: {out / 'timeline.html'}, "
                      f"{out / 'timeline.png'}  summary: {out / 'summary.json'}")
    problems = demo_problems(summary, keys, eve)
    for problem in problems:
        console.print(f"[red]failed:[/red] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)


def sweep(out: Annotated[Path, typer.Option(
              "--out", "-o", help="Output folder for sweep.csv and sweep.png (new or empty).")
          ] = Path("sweep-out"),
          topology: TopologyOpt = Path("examples/paper_poc.yaml"),
          link: Annotated[str | None, typer.Option(
              help="Link whose physics is swept (default: the topology's first link).")
          ] = None,
          from_km: Annotated[float, typer.Option(
              "--from-km", min=0.0, help="First fibre length, km.")] = 0.0,
          to_km: Annotated[float, typer.Option(
              "--to-km", min=0.0, max=1000.0, help="Last fibre length, km.")] = 200.0,
          step_km: Annotated[float, typer.Option(
              "--step-km", min=0.1, help="Step between lengths, km.")] = 20.0,
          blocks: Annotated[int, typer.Option(
              min=2, help="Blocks measured per length and mode.")] = 4,
          max_frames: Annotated[int, typer.Option(
              "--max-frames", min=1, help="Frames per length and mode at most (a link past "
                                          "its cut-off never fills a block).")] = 20_000,
          seed: Annotated[int, typer.Option(help="Seed of the emulation.")] = 1,
          force: Annotated[bool, typer.Option(
              "--force", help="Write into a non-empty --out, replacing sweep.csv/png.")
          ] = False) -> None:
    """Secret key rate against distance: the emulated and analytic modes measured on a
    virtual clock, with the GLLP (infinite decoys) and PLOB curves; sweep.csv + sweep.png."""
    from keyplane.extras import MissingDependency
    from keyplane.sweep import SweepSettings, run_sweep, write_csv, write_png

    topo = _load(topology)
    links = {lk.link_id: lk for lk in topo.links}
    if not links or (link is not None and link not in links):
        console.print(f"[red]error:[/red] --link: no link {link!r} in {topology} "
                      f"(links: {', '.join(links) or 'none'})")
        raise typer.Exit(2)
    if to_km < from_km:
        console.print("[red]error:[/red] --to-km must not be below --from-km")
        raise typer.Exit(2)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        console.print(f"[red]error:[/red] --out {out} is not an empty folder: choose another "
                      "--out, or --force to replace its sweep files")
        raise typer.Exit(2)
    base = links[link] if link is not None else topo.links[0]
    n = round((to_km - from_km) / step_km) + 1
    distances = tuple(round(from_km + i * step_km, 6) for i in range(n)
                      if from_km + i * step_km <= to_km + 1e-9)
    settings = SweepSettings(distances_km=distances, blocks=blocks, max_frames=max_frames,
                             seed=seed)
    shown = Console()

    def progress(p: Any) -> None:
        shown.print(f"{p.distance_km:6.1f} km  bit/s: emulated {p.emulated_skr_bps:9.4g}  "
                    f"analytic {p.analytic_skr_bps:9.4g}  GLLP {p.gllp_bps:9.4g}  "
                    f"PLOB {p.plob_bps:9.4g}", highlight=False)

    points = asyncio.run(run_sweep(base, settings, progress))
    ensure_private_dir(out)
    csv_path = write_csv(points, out / "sweep.csv")
    try:
        png = write_png(points, out / "sweep.png",
                        title=f"{topo.name} {base.link_id}: secret key rate against distance")
    except MissingDependency as exc:
        console.print(f"[red]error:[/red] wrote {csv_path}, but {exc}", highlight=False)
        raise typer.Exit(1) from None
    shown.print(f"wrote {csv_path} and {png}")
