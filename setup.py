"""Build configuration that setup.cfg cannot express: the optional C module.

Metadata lives in setup.cfg. ``replicant._speedups`` is optional: without a
C compiler and Python's headers the build goes on without it, and replicant
runs its pure-Python equivalents.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "replicant._speedups",
            sources=["replicant/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
