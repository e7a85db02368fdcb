"""The programs: grpo, sft, evaluate, ladder, demo, ablate (entry points that orchestrate training/). Imports every layer below cli."""
