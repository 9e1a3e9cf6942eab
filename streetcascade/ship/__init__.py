"""Shipping the online side: `streetcascade package` builds a one-file artifact (a PEX zipapp)
holding the runtime, the miner, their dependencies for one platform, one engine set and one
miner config; the artifact's entry point (entry.py) checks what it carries by hash and serves.

bundle.py   what the artifact carries and how it is checked (light: runs inside the artifact)
entry.py    the artifact's command line: serve, doctor, info, health (light)
contents.py which modules and requirements the online side of an engine set needs
build.py    the packager (offline; runs pex / shiv)
"""
