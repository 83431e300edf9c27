"""Shipping a finished run: merging the adapter, pushing to the Hugging Face Hub (at the end of training
and, in the background, each checkpoint)."""
