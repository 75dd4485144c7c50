"""The wire formats the server speaks, each one module: parse a request body into a `CompletionRequest`,
and turn the engine's events into that protocol's replies. No HTTP here (see serve/http.py).

- native.py: sc2's own `POST /v1/complete`, the engine's events as they are;
- infill.py: llama.cpp's `POST /infill` (llama.vim, llama.vscode);
- openai.py: OpenAI's legacy `POST /v1/completions` with `prompt` + `suffix`.
"""
