"""Archival storage backends: one module each behind ``ArchivalStore`` (see base.py), registered here."""
