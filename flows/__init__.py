"""Prefect flows (``week1``, ``prepare-data``) and the ``openmind`` CLI: composition only, no ML logic."""
