"""The web API's routers, one module per resource (server, lora, trainer, datasets, jobs)."""
