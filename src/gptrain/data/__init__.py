"""Text in, token ids out: tokenizers, corpora, prepared shards and training windows."""
