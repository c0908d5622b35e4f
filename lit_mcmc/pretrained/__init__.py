"""Adapters for models trained elsewhere: published OpenAI guided-diffusion (ADM) checkpoints."""
