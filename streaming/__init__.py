"""The Structured Streaming side of pseudo-labelling: scoring a micro-batch with a model (``score``),
the query that wires source -> score -> the pseudo-label output (``pseudolabel``, with its checks and
checkpoint reader) and the live dashboard. The feature's math and format: ``pipeline.pseudolabel``."""
