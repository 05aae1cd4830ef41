"""The wire contract between the client, the gateway and the agent inside each remote kernel.

Light on purpose (the standard library only), so the gateway can import it without the client
stack:

- `env`: the names of the environment variables the three sides pass each other;
- `messages`: Jupyter messages as raw parts, and their ``v1.kernel.websocket.jupyter.org``
  framing;
- `dataport`: the kernel's data port: framing, signed requests, moving bytes, handing over a
  connection;
- `callback`: what a containerised kernel reports to the gateway, and how it is checked;
- `code`: the code the client and the gateway send to kernels (the agent's entry points);
- `amounts`: the grammar of GPU amounts and durations (``KERNEL_GPU``, ``KERNEL_DURATION``).
"""
