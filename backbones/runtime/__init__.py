"""Code that only the tools use: config preparation, precision, device, fast inference, complexity.

Never imported by a config or by the rest of :mod:`backbones`.
"""
