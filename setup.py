# The one thing pyproject.toml cannot say: two optional C extensions. Without a C
# compiler and Python's headers the install goes on without them:
# - the histogram table's kernel (protocol/_table_kernel.c): the coordinator then
#   checks and merges tables with numpy (the same rules, ~3x the CPU at a thousand
#   agents);
# - the fast engine's lane (agent/_lane.c): closed-loop users then run every
#   request through the Python path (the same results, ~1.7x the CPU per request).
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "loadctl.protocol._table_kernel",
            ["protocol/_table_kernel.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "loadctl.agent._lane",
            ["agent/_lane.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
