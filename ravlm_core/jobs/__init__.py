"""Jobs: bulk retrieval-augmented VQA and captioning over parts of a query set, and the answerers they train."""
