"""shmkit: real Linux processes exercising shared memory, observed exactly.

Live side: shmkit.spec (experiment files), shmkit.manager and shmkit.worker
(processes), shmkit.procfs and shmkit.observe (what the kernel shows),
shmkit.record (the JSON record), shmkit.registry (names and cleanup).
The kernel model lives in the separate package `model`.
"""
__version__ = "0.1.0"
