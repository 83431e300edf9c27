"""multitune against TRL + PEFT on the same CPU step, and the training levers behind its speed."""
