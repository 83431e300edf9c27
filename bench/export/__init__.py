"""Shipping: GGUF out of a run, read back by transformers and run in llama.cpp itself."""
