"""``python -m gateway.container``: build the job image (see `gateway.container.build`)."""

from gateway.container.build import main

main()
