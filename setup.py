# The one thing pyproject.toml cannot say: the histogram table's compiled kernel
# (protocol/_table_kernel.c). It is optional: without a C compiler and Python's
# headers the install goes on without it, and the coordinator checks and merges
# tables with numpy instead (the same rules, ~3x the CPU at a thousand agents).
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "loadctl.protocol._table_kernel",
            ["protocol/_table_kernel.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
