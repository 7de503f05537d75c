"""Index: vector (with its recall gate), full-text and scalar indexes over the store's tables."""
