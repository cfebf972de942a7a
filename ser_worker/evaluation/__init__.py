"""Scores of predictions against labels, the one ensemble rule, and their pictures."""
