"""gpubatch: run large batches of independent GPU tasks on Kubernetes.

Layers (inner never import outer; enforced by import-linter, see pyproject.toml):
api -> core (pure) -> edges (I/O) -> controller / worker / cli.
"""

__version__ = "0.1.0"
