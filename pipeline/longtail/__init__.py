"""Long-tailed splits, the feature behind jobs/longtail.py: the class-count profiles and seeded
subsampling (``profiles``: pure numpy, no Spark) and the Spark job that carves an ingest into
labeled, validation, unlabeled and test splits with their manifest (``splits``)."""
