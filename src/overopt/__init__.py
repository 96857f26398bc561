"""overopt: a lab for reward hacking in RLHF and RLVR."""

__version__ = "0.1.0"
