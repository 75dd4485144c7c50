"""Checkpoints on disk and on the hub: names, file rules, safetensors headers, download, the cache, and
`open_checkpoint`, the one way from a `--model` value to weights. Imports the model layer only (to build
the network it loads), never completion, serve or cli."""
