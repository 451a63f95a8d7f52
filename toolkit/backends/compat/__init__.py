"""Older client generations (room: backends/compat/): MemGPT 0.3.x reads Chroma through chromadb 0.5.

chromadb 0.5 and the chromadb 1.x the toolkit imports cannot live in one interpreter, and each writes an
on-disk format the other cannot read (1.x upgrades 0.5 directories in place; 0.5 cannot open 1.x ones).
So the toolkit builds an isolated environment holding the old client (``envs.py``, with uv, cached
under the state directory) and talks to it over a pipe (``chroma_client.py`` in this process,
``chroma_worker.py`` in that one). The Chroma store does not know which side of the pipe it talks to:
the worker client answers the part of chromadb's client API the store uses.
"""
