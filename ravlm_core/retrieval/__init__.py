"""Retrieval: nearest neighbours with filters and a leakage guard, knowledge bases, `--where` filters."""
