"""The job image of the docker and swarm runtimes: its Dockerfile and `build` (``make image``)."""
