"""Fine-tuning and evaluation of Audio-Reasoner-style models (Qwen2-Audio) on published cotaforge shards.

Importing this package is cheap: torch and transformers load inside the functions that need them.
"""
