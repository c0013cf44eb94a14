"""stldec: decode Signal Temporal Logic formulae from kernel embeddings."""
