"""gpubatch.edges."""
