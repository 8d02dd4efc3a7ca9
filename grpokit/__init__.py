"""grpokit: post-train language models by sampling and verifying."""

__version__ = "0.1.0"
