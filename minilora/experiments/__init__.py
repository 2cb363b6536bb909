"""The stories the command line tells: each module has ``run(quick, seed, device, progress)``."""
