"""The repository around the file being completed: which files may be read (tracked by git, not vendored,
binary or secret), an on-disk index of their chunks, the files a file imports, and the context chosen
from them. Imports only `completion` (for `Document`): no model, no torch, no CLI."""
