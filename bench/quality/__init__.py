"""Does a run learn: the quality proofs on banking77, SmolLM2 and the multi-task table, and their spread."""
