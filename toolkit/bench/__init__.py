"""``seg benchmark``: speed, memory and accuracy of every engine, variant and batch in one run."""
