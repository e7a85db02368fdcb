"""Generating responses (the backend Protocol, HF generate) and the step's Trajectory. Imports algos, rewards, models, data."""
