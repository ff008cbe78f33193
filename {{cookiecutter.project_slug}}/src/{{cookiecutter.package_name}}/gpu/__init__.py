"""GPU preflight: the one checker behind the post-generation hook, `gpu-check`, training and the image.

Standard library only at import time (pynvml and torch are loaded inside the checks), so the
hook can run it in whatever Python runs cookiecutter and answer in well under a second.
"""
