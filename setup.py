# The one compiled piece: shmkit/_access.c, the page-access loop that must
# allocate nothing, bracket its own faults with getrusage, and survive a
# SIGBUS/SIGSEGV (sigsetjmp/siglongjmp), which Python code cannot do.
from setuptools import Extension, setup

setup(ext_modules=[Extension("shmkit._access", ["shmkit/_access.c"])])
