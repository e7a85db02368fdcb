"""observe-r1: RL post-training of vision-language models (GRPO + the Observe-R1 recipe).

Layers, lowest first; a package imports only its own layer and those before it (tests/test_layers.py):
  config    the schema                      algos     pure tensor functions of the RL algorithm
  rewards   accuracy, formats, combination  models    inputs (chat + images -> tensors), policy loading
  data      datasets, prompts, samplers     rollout   generation backends and the step's Trajectory
  toy       synthetic task and tiny models  training  the machinery the loops share
  recipes   the programs (grpo, sft, ...)   cli       the `observe-r1` command
"""
