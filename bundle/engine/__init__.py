"""Engine plumbing: errors, atomic files and checkpoints, RNG state, run settings and distributed helpers."""
