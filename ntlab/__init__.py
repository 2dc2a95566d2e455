"""ntlab: negative transfer in auxiliary-task learning, task-weight sweeps, and ForkMerge."""

__version__ = "0.1.0"
