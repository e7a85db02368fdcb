"""The RL algorithm as pure tensor functions (no config objects, no I/O)."""

from observe_r1.algos.bonus import apply_length_bonus

__all__ = ["apply_length_bonus"]
