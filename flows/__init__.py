"""Prefect flows that read like ravlm's DAG: ingest → embed → index → VQA / caption → evaluate → report."""
