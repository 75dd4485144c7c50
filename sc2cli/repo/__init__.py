"""The repository around the file being completed: which files may be read (tracked by git, not vendored,
binary or secret), an on-disk index of their chunks, the files a file imports, and the context chosen
from them. Imports only `completion` (for `Document`): no model, no torch, no CLI."""

CONTEXT_SHARE = 0.25  # the prompt's share (after the completion's tokens) that other files get by default;
# `sc2 eval --vary context-budget=...` measures it (README). Here, not in context.py: the CLI's options
# read it when `sc2 --help` runs, which must import nothing heavy
