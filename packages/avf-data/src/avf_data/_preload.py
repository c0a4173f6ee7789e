"""Imported by the local engine's fork server: heavy libraries are imported once there and
every worker forked from it inherits them (a clean, single-threaded parent to fork from)."""

from .pipeline import preload_modules

preload_modules()
