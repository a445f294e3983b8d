"""`shmkit bench`: mmap versus read IPC between real processes (docs/bench.md)."""
FORMAT = 1
