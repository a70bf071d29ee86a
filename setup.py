"""Build configuration that setup.cfg cannot express: the optional C module.

Metadata lives in setup.cfg. ``replicant._speedups`` is optional: without a
C compiler and Python's headers the build goes on without it, and replicant
runs its pure-Python equivalents. It is one module made of one C file per
Python twin (see replicant/_speedups.c).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "replicant._speedups",
            sources=[
                "replicant/_speedups.c",
                "replicant/_drain.c",
                "replicant/_rows.c",
                "replicant/_events.c",
                "replicant/_values.c",
                "replicant/_json.c",
                "replicant/_w2j.c",
                "replicant/_pgout.c",
            ],
            depends=["replicant/_speedups.h"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
