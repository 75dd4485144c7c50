"""`sc2 eval`: completion quality on the user's own code. Spans of the repository (lines added in recent
commits, or random lines of tracked files) are hidden one at a time and completed through the real prompt
path, under one or more configurations, and scored (spans.py, score.py, vary.py, run.py). Torch-free until
an engine is opened; never prints (the CLI shows the table)."""
