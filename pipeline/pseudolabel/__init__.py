"""Pseudo-labels, the feature: which predictions to keep (``policies``), the pool's class prior and the
corrections built on it (``prior``: EM, BBSE, DARP, CReST's rates), the class balance of what is
kept (``balance``) and the output's format with its writers and readers (``store``). Pure numpy and
pyarrow: the Structured Streaming job that produces the output (``streaming.pseudolabel``), the
dashboard that watches it and the semi-supervised trainer that reads it all import from here."""
