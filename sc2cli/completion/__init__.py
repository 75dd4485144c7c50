"""One completion, as pure functions where it can be: the request, the cursor, the prompt and its budget,
the tokenizer, sampling and generation, the stop rules, and the engine that streams typed events.

Imports the model layer only; never checkpoint, serve or cli."""
