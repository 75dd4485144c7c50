"""The StarCoder2 network and where it runs: config, model, attention, matrix kernels, device and dtype.

Imports nothing from the layers above it (checkpoint, completion, serve, cli)."""
