"""Structured Streaming pseudo-labelling and its dashboard (the streaming issue fills this package)."""
