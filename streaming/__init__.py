"""Structured Streaming pseudo-labelling: scoring, selection policies, class balance, the sinks that write the output (its format and readers: pipeline.pseudo_labels), and the live dashboard."""
