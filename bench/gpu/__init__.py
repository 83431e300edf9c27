"""The GPU check (issues 11 and 22): every training path and evaluation on a Llama-3-8B-shaped model."""
