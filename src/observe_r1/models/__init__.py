"""Model inputs (chat + PIL images -> batched tensors) and the policy (loading, LoRA, log-probs). Imports nothing of observe_r1."""
