"""Datasets (peer layouts, validation), system prompts, NeuraLadder ordering, prompt samplers. Imports config and models."""
