"""Evaluation: scoring against generating, and where evaluation time goes on a real model."""
