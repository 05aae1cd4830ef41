"""The hub tier: a real JupyterHub (configurable-http-proxy, a dummy authenticator, a local
spawner) in front of the gateway, its users' own single-user servers running the clients."""
