"""holdmount: keep mounts alive and run finalize work safely at the edges of a system's life."""

__version__ = "0.1.0"
