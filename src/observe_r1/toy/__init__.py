"""The synthetic visual-reasoning task and tiny random models, for the demo, tests and laptops. Imports data and models."""
