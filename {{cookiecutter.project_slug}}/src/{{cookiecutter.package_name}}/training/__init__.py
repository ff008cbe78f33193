"""Training machinery, independent of any task: the loop, its resumable state and the run directory."""
