"""nicheloop: adapt a pretrained vision model to a niche domain and keep it improving."""

__version__ = "0.1.0"
