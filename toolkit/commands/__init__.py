"""CLI commands, one module per verb (or family of verbs); each a thin layer over the library."""
