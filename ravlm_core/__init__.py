"""ravlm's library, a sub-package per stage of the DAG (ingest → encoders → embed → index → retrieval → generators →
jobs → evaluate → query) over a small foundation of top-level modules; it never imports Prefect."""
