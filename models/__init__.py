"""Model architectures, registered by name (the training issue fills this package)."""
