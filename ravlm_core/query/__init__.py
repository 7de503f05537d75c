"""Query: interactive search, ask, near-duplicates, SQL and status over a store (no Prefect, no training)."""
