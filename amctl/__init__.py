"""amctl: run, drive and measure the Audience Manager platform."""

__version__ = "0.1.0"
