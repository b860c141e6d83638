"""A classifier's predictions: the book's ``classify_review``, and the class probabilities of many texts
as ``gptrain classify`` prints them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import resolve_device
from gptrain.data.labeled import pad_encoded
from gptrain.data.tokenizer import END_OF_TEXT_ID
from gptrain.interop.sources import ModelSource, resolve_model
from gptrain.model.classifier import class_logits, is_classifier


def classify_review(text, model, tokenizer, device, max_length=None, pad_token_id=END_OF_TEXT_ID):
    """The book's chapter 6 example: ``"spam"`` when the last token's argmax is class 1, else
    ``"not spam"``. The text is cut to ``max_length`` (and the model's context) and padded to it;
    with no ``max_length`` it is cut to the context and not padded."""
    model.eval()
    input_ids = tokenizer.encode(text)
    supported_context_length = model.pos_emb.weight.shape[0]
    length = supported_context_length if max_length is None else max_length
    input_ids = input_ids[:min(length, supported_context_length)]
    input_ids += [pad_token_id] * (length - len(input_ids)) if max_length is not None else []
    input_tensor = torch.tensor(input_ids, device=device).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_tensor)[:, -1, :]
    predicted_label = torch.argmax(logits, dim=-1).item()
    return "spam" if predicted_label == 1 else "not spam"


def class_probabilities(model: nn.Module, token_ids: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(rows, classes) softmax of the last token's logits of each row of ``token_ids``."""
    model.eval()
    device = model.tok_emb.weight.device
    with torch.no_grad():
        parts = [torch.softmax(class_logits(model, batch.to(device)).float(), dim=-1).cpu()
                 for batch in token_ids.split(batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, model.out_head.out_features)


@dataclass(frozen=True)
class Classifier:
    """A loaded classifier: the model, its labels and the length its inputs are padded to."""

    source: ModelSource

    @property
    def labels(self) -> list[str]:
        return self.source.labels

    def encode(self, texts: list[str]) -> torch.Tensor:
        tokenizer = self.source.tokenizer
        encoded = [tokenizer.encode(text, allowed_special="all") for text in texts]
        return torch.tensor(pad_encoded(encoded, self.source.max_length, tokenizer.eot_token), dtype=torch.long)

    def probabilities(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        return class_probabilities(self.source.model, self.encode(texts), batch_size)


def load_classifier(model: str, *, device: str = "auto") -> Classifier:
    """The classifier ``model`` names (a ``gptrain finetune classify`` run or checkpoint)."""
    source = resolve_model(model, device=resolve_device(device), allow_classifier=True)
    if source.labels is None or not is_classifier(source.model):
        raise GptrainError(f"{model} is a language model, not a classifier: fine-tune one first with "
                           "gptrain finetune classify --model SOURCE --data FILE --out RUN")
    return Classifier(source)


__all__ = ["Classifier", "class_probabilities", "classify_review", "load_classifier"]
