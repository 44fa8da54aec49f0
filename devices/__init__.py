"""Device models: each a self-contained module behind devices.base."""
