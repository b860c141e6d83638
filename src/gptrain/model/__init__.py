"""The GPT model itself: its shape config, GPTModel, LoRA layers, losses and counts."""
