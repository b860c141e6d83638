"""Training runs: settings, optimizers, parallelism, the loop, resume and locks."""
