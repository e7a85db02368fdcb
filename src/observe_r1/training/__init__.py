"""What the training loops share: runtime, setup, checkpoints, tracking, generate-and-score, evaluation, the end of a step. Imports every layer below recipes."""
