"""gpubatch.worker."""
