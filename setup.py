"""The native parts: the parsing kernel and the shutdown deadline, built by setuptools for the CPU
family, not the CPU.

Everything else about the package is in pyproject.toml. No -march: the kernel picks its AVX2
path at run time, so a wheel or image built on one machine runs on any x86-64.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.core._kernel",
            sources=["service/core/_kernel.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror=vla"],
        ),
        Extension(
            "service.lifecycle._deadline",
            sources=["service/lifecycle/_deadline.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=vla"],
        ),
    ]
)
