"""gpubatch.controller."""
