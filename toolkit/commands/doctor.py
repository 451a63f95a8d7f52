"""`toolkit doctor`: check this machine for everything the toolkit needs."""

from __future__ import annotations

import click

from toolkit.commands._common import Port, echo, echo_json, settings_from
from toolkit.settings import ENGINES


@click.command()
@click.option("--engine", type=click.Choice(ENGINES), help="Check for this engine [default: auto, as `toolkit up`].")
@click.option("--image", help="Check for this Docker image [default: pgvector/pgvector:pg16; TOOLKIT_PG_IMAGE].")
@click.option("--port", type=Port(), help="Port to check [default: 8888].")
@click.option("--url", "external_url", help="Engine external: URL of the server to check [TOOLKIT_PG_URL].")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"ok": ..., "engine": ..., "reason": ..., "checks": [...]} for CI.')
@click.pass_context
def doctor(ctx: click.Context, engine: str | None, image: str | None, port: int | None, external_url: str | None,
           as_json: bool) -> None:
    """Check Python, the embedded wheel, the port, .env, Docker, and which extras are installed; say
    which engine `toolkit up` would use, and why.

    Exits 1 when something that engine needs is missing (Docker chosen but no Docker engine answers or
    its image can be neither found nor pulled; embedded chosen but the wheel is broken; the port held by
    a server that is not the toolkit's; external chosen but its server does not answer), or a configured
    part is broken; each failing line says how to
    fix it. Engine auto never counts on Docker when the image cannot be had: it falls back to embedded,
    as `toolkit up` does, and doctor says so. An extra not installed (pip install 'toolkit[all]') is
    reported, not failed.

    \b
    Examples:
      toolkit doctor
      toolkit doctor --json | jq -e .ok        # CI: fail early, with the reasons in the log
      toolkit doctor --engine docker --image toolkit/pgvector-offline:pg18
    """
    from toolkit.doctor import diagnose

    settings = settings_from(ctx, **{"engine": engine, "image": image, "db.port": port, "external_url": external_url})
    report = diagnose(settings)
    if as_json:
        echo_json(report.as_dict(), settings)
    else:
        for check in report.checks:
            mark = "ok  " if check.ok else "FAIL"
            echo(f"{mark} {check.name:15} {check.detail}" + ("" if check.ok or not check.fix else f" ({check.fix})"), settings)
    if not report.ok:
        ctx.exit(1)
