"""`toolkit doctor`: check this machine for everything the toolkit needs."""

from __future__ import annotations

import click

from toolkit.commands._common import Port, echo, echo_json, settings_from


@click.command()
@click.option("--port", type=Port(), help="Port to check [default: 8888].")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def doctor(ctx: click.Context, port: int | None, as_json: bool) -> None:
    """Check Python, the embedded wheel, the port, .env, Docker, and which extras are installed.

    An extra not installed (chroma, lancedb, s3: pip install 'toolkit[all]') is reported, not failed.

    Exits 1 when a check fails; each failing line says how to fix it.

    \b
    Examples:
      toolkit doctor
      toolkit doctor --port 5433 --json   # the checks as a list, for CI logs
    """
    from toolkit.doctor import as_dicts, run_checks

    settings = settings_from(ctx, **{"db.port": port})
    checks = run_checks(settings)
    if as_json:
        echo_json(as_dicts(checks), settings)
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            echo(f"{mark} {check.name:15} {check.detail}" + ("" if check.ok or not check.fix else f" ({check.fix})"), settings)
    if not all(c.ok for c in checks):
        ctx.exit(1)
