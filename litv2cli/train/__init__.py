"""The training layer: the loop shared by pretrain and finetune, its checkpoints, optimiser,
losses, evaluation and progress."""
