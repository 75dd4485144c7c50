"""Development tooling, not part of the product: training and data for the built-in tiny model
(`python -m sc2cli.dev.train_tiny`). Nothing in sc2cli imports it."""
