"""The PLGDF method: the network, its losses, the mix module, the EMA teacher, the ramp-up and the training step."""
