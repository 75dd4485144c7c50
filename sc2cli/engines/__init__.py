"""Clients of external serving engines (vLLM and other OpenAI-compatible servers, llama.cpp's server),
behind the same event stream as the in-process engine: sc2 builds the prompt, the engine runs the model.
Torch-free: a completion through an engine never loads torch."""
