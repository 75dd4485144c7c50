"""`sc2 serve` and its clients: the HTTP server (server.py, http.py), the protocols it speaks
(protocols/), the runtime folder where servers announce themselves (runtime.py) and the torch-free client
(client.py). Imports completion (the engine it serves) but never cli."""
