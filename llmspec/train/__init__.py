"""The training-loop contract every backend shares: schedule, optimizer groups, checkpoints, metrics, sampling."""
