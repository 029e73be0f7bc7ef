"""From validated options to running processes: the run spec and directory, the launcher
(accelerate, torchrun, SLURM), DeepSpeed configs and the worker each process runs."""
