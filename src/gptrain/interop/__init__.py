"""Weights from and to other tools: Hugging Face GPT-2, the book's state dicts, PEFT."""
