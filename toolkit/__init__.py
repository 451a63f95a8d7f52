"""toolkit: provision Postgres+pgvector and check MemGPT-style archival storage backends.

The package is a library first; ``toolkit.cli`` is a thin click layer over it. Heavy imports (docker,
chromadb, lancedb, numpy, psycopg) live inside the functions that need them so the CLI starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "postgres"]


def __getattr__(name: str):  # lazy re-export keeps `import toolkit` light
    if name == "postgres":
        from toolkit.api import postgres

        return postgres
    raise AttributeError(name)
