"""Training: losses, optimizers, input pipelines, checkpoints and the loop that ties them."""
