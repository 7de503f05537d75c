"""Ingest: read sources (folders, manifests, COCO, VQAv2, easy-VQA), diff them against the store, write content shards and apply memberships."""
