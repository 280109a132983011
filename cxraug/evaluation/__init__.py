"""Evaluation: gather real, generated and predicted inputs, run metric plugins, write reports."""
