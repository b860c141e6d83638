"""The GPT model itself: its shape config, GPTModel, LoRA layers, int8 layers, losses and counts."""
