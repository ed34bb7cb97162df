"""Spectra: per-token attention measurements and query-scaling interventions for decoder LLMs."""

__version__ = "0.1.0"
