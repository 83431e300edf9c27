"""`multitune plan`'s estimate against its own measurement."""
