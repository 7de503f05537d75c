"""ravlm's library: sources, ingest, encoders, store, retrieval, answerers, metrics, reports (no Prefect here)."""
