"""Engines: where Postgres runs (embedded wheel, Docker, an external URL), behind one Protocol."""
