"""Versus services: the shared runtime (``common``) and one package per model service."""
