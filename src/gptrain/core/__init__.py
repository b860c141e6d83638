"""Foundations every layer may use: errors, devices and precision, files, hashing, downloads."""
