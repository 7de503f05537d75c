"""Evaluate: metrics over prediction tables, eval_runs records and the HTML report."""
