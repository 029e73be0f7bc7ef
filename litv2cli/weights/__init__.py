"""Model weights from anything a user points at: safe reading of untrusted files, every
checkpoint kind, and what a checkpoint is (variant, alpha, window, classes)."""
