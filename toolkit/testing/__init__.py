"""Databases for test suites: ``toolkit.testing.plugin`` is the pytest plugin (installed with the package,
entry point ``pytest11: toolkit``); ``server`` shares one running server between test processes, and
``databases`` hands each test a fresh database cloned from the run's template.
"""
