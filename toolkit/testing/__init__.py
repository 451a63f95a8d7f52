"""Databases for test suites: ``toolkit.testing.plugin`` is the pytest plugin (installed with the package,
entry point ``pytest11: toolkit``); ``server`` shares one running server between test processes, and
``databases`` hands each test a fresh database cloned from the run's template; ``archival`` (the fixture) and
``stores`` give each test an empty table of its own in one archival backend.
"""
