"""Embed: the built-in or a user's encoder pinned per store, content shards read → encoded → upserted, texts embedded."""
